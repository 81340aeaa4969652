package org.custos.keycloak;

import java.nio.charset.StandardCharsets;
import org.keycloak.events.Event;
import org.keycloak.events.admin.AdminEvent;
import org.keycloak.events.admin.AuthDetails;

/**
 * Keycloak events as the JSON the Custos ingest decodes ({@code schemas/src/decode/keycloak.rs}):
 * the attribute names of Keycloak's own event JSON, plus {@code realmName} (the ingest's tenant)
 * and {@code issuer} (the realm's issuer URL, as in the {@code iss} of its tokens). Details and
 * representations pass through {@link SecretFilter}.
 */
final class EventJson {
    private EventJson() {}

    /**
     * A user event as a spool record: key = realm and user, value = event JSON, with the user's
     * {@code fhirUser} when known (null leaves it out).
     */
    static SpoolRecord user(Event event, String issuer, String fhirUser) {
        Json json = new Json()
                .put("id", event.getId())
                .put("time", event.getTime())
                .put("type", event.getType() == null ? null : event.getType().name())
                .put("realmId", event.getRealmId())
                .put("realmName", event.getRealmName())
                .put("issuer", issuer)
                .put("clientId", event.getClientId())
                .put("userId", event.getUserId())
                .put("fhirUser", fhirUser)
                .put("sessionId", event.getSessionId())
                .put("ipAddress", event.getIpAddress())
                .put("error", event.getError())
                .put("details", SecretFilter.details(event.getDetails()));
        return new SpoolRecord(key(event.getRealmId(), event.getUserId()), json.toBytes());
    }

    /**
     * An admin event as a spool record: key = realm and the user the resource path names (else
     * the realm alone). The representation is kept only when {@code includeRepresentation}
     * and {@link SecretFilter#representation} allow it.
     */
    static SpoolRecord admin(AdminEvent event, boolean includeRepresentation, String issuer) {
        AuthDetails auth = event.getAuthDetails();
        Json authJson = auth == null
                ? null
                : new Json()
                        .put("realmId", auth.getRealmId())
                        .put("realmName", auth.getRealmName())
                        .put("clientId", auth.getClientId())
                        .put("userId", auth.getUserId())
                        .put("ipAddress", auth.getIpAddress());
        Json json = new Json()
                .put("id", event.getId())
                .put("time", event.getTime())
                .put("realmId", event.getRealmId())
                .put("realmName", event.getRealmName())
                .put("issuer", issuer)
                .put("authDetails", authJson)
                .put("resourceType", event.getResourceTypeAsString())
                .put("operationType", event.getOperationType() == null ? null : event.getOperationType().name())
                .put("resourcePath", event.getResourcePath())
                .put("error", event.getError())
                .put("details", SecretFilter.details(event.getDetails()))
                .put(
                        "representation",
                        SecretFilter.representation(
                                includeRepresentation,
                                event.getResourceType(),
                                event.getResourcePath(),
                                event.getRepresentation()));
        return new SpoolRecord(key(event.getRealmId(), pathUser(event.getResourcePath())), json.toBytes());
    }

    /** The user id of a {@code users/{id}[/...]} resource path, else null. */
    static String pathUser(String path) {
        if (path == null) {
            return null;
        }
        String[] segments = path.replaceAll("^/+", "").split("/");
        if (segments.length >= 2 && segments[0].equals("users") && !segments[1].isEmpty()) {
            return segments[1];
        }
        return null;
    }

    /** The record key: {@code realm/user}, or {@code realm} without a user. */
    static byte[] key(String realmId, String userId) {
        String realm = realmId == null ? "" : realmId;
        String key = userId == null || userId.isEmpty() ? realm : realm + "/" + userId;
        return key.getBytes(StandardCharsets.UTF_8);
    }
}
