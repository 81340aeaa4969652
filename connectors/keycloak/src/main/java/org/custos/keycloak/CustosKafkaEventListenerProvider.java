package org.custos.keycloak;

import java.net.URI;
import org.keycloak.events.Event;
import org.keycloak.events.EventListenerProvider;
import org.keycloak.events.admin.AdminEvent;
import org.keycloak.models.KeycloakSession;
import org.keycloak.models.RealmModel;
import org.keycloak.models.UserModel;
import org.keycloak.services.Urls;

/** The per-session listener: turns each event into a spool record and hands it over. */
final class CustosKafkaEventListenerProvider implements EventListenerProvider {
    private final Publisher publisher;
    private final boolean includeRepresentation;
    private final String fhirUserAttribute;
    private final KeycloakSession session;

    CustosKafkaEventListenerProvider(
            Publisher publisher,
            boolean includeRepresentation,
            String fhirUserAttribute,
            KeycloakSession session) {
        this.publisher = publisher;
        this.includeRepresentation = includeRepresentation;
        this.fhirUserAttribute = fhirUserAttribute;
        this.session = session;
    }

    @Override
    public void onEvent(Event event) {
        publisher.submit(EventJson.user(event, issuer(event.getRealmName()), fhirUser(event)));
    }

    /**
     * The FHIR resource of the event's user (its {@code fhirUser} attribute, the value of the
     * SMART {@code fhirUser} claim), so that the ingest classes the user's events the same way
     * as the FHIR server's records of the same user: a practitioner's identifiers stay readable,
     * a patient's are pseudonymized. Null when off, without a user, or when the user is gone.
     * Keycloak's user cache answers this lookup without a database query in the common case.
     */
    private String fhirUser(Event event) {
        if (fhirUserAttribute == null || session == null || event.getUserId() == null) {
            return null;
        }
        try {
            RealmModel realm = session.realms().getRealm(event.getRealmId());
            if (realm == null) {
                return null;
            }
            UserModel user = session.users().getUserById(realm, event.getUserId());
            return user == null ? null : user.getFirstAttribute(fhirUserAttribute);
        } catch (RuntimeException e) {
            return null;
        }
    }

    @Override
    public void onEvent(AdminEvent event, boolean representationIncluded) {
        publisher.submit(EventJson.admin(
                event, includeRepresentation && representationIncluded, issuer(event.getRealmName())));
    }

    /**
     * The realm's issuer URL as its tokens carry it in {@code iss}, from the request this event
     * belongs to; null when there is no request context (the ingest then falls back to
     * {@code keycloak:{realmId}}).
     */
    private String issuer(String realmName) {
        if (realmName == null || session == null) {
            return null;
        }
        try {
            URI base = session.getContext().getUri().getBaseUri();
            return Urls.realmIssuer(base, realmName);
        } catch (RuntimeException e) {
            return null;
        }
    }

    @Override
    public void close() {
        // Nothing per session.
    }
}
