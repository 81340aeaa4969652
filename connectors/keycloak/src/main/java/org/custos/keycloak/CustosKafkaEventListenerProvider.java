package org.custos.keycloak;

import org.keycloak.events.Event;
import org.keycloak.events.EventListenerProvider;
import org.keycloak.events.admin.AdminEvent;

/** The per-session listener: turns each event into a spool record and hands it over. */
final class CustosKafkaEventListenerProvider implements EventListenerProvider {
    private final Publisher publisher;
    private final boolean includeRepresentation;

    CustosKafkaEventListenerProvider(Publisher publisher, boolean includeRepresentation) {
        this.publisher = publisher;
        this.includeRepresentation = includeRepresentation;
    }

    @Override
    public void onEvent(Event event) {
        publisher.submit(EventJson.user(event));
    }

    @Override
    public void onEvent(AdminEvent event, boolean representationIncluded) {
        publisher.submit(EventJson.admin(event, includeRepresentation && representationIncluded));
    }

    @Override
    public void close() {
        // Nothing per session.
    }
}
