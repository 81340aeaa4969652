package org.custos.keycloak;

import java.net.URI;
import org.keycloak.events.Event;
import org.keycloak.events.EventListenerProvider;
import org.keycloak.events.admin.AdminEvent;
import org.keycloak.models.KeycloakSession;
import org.keycloak.services.Urls;

/** The per-session listener: turns each event into a spool record and hands it over. */
final class CustosKafkaEventListenerProvider implements EventListenerProvider {
    private final Publisher publisher;
    private final boolean includeRepresentation;
    private final KeycloakSession session;

    CustosKafkaEventListenerProvider(
            Publisher publisher, boolean includeRepresentation, KeycloakSession session) {
        this.publisher = publisher;
        this.includeRepresentation = includeRepresentation;
        this.session = session;
    }

    @Override
    public void onEvent(Event event) {
        publisher.submit(EventJson.user(event, issuer(event.getRealmName())));
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
