package org.custos.keycloak;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.keycloak.events.Event;
import org.keycloak.events.EventType;
import org.keycloak.events.admin.AdminEvent;
import org.keycloak.events.admin.AuthDetails;
import org.keycloak.events.admin.OperationType;
import org.keycloak.events.admin.ResourceType;

class EventJsonTest {
    private static final String CANARY = "canary-7f3a9c";
    private static final String ISSUER = "https://as.example/realms/custos";
    private static final String JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXBhcnQ";

    private static String text(SpoolRecord r) {
        return new String(r.value(), StandardCharsets.UTF_8);
    }

    private static Event login() {
        Event e = new Event();
        e.setId("ev-1");
        e.setTime(1_700_000_000_123L);
        e.setType(EventType.CODE_TO_TOKEN);
        e.setRealmId("realm-uuid");
        e.setRealmName("custos");
        e.setClientId("custos-console");
        e.setUserId("user-1");
        e.setSessionId("sess-1");
        e.setIpAddress("10.0.0.7");
        Map<String, String> d = new HashMap<>();
        d.put("token_id", "jti-1");
        d.put("refresh_token_id", "rt-1");
        d.put("scope", "openid profile");
        d.put("grant_type", "password");
        d.put("username", CANARY);
        d.put("code_id", CANARY);
        d.put("redirect_uri", "https://app.example/cb?code=" + CANARY);
        d.put("custom_secret", CANARY);
        e.setDetails(d);
        return e;
    }

    @Test
    void userEventHasTheDecoderFieldsInKeycloakNames() {
        String json = text(EventJson.user(login(), ISSUER, null));
        assertEquals(
                "{\"id\":\"ev-1\",\"time\":1700000000123,\"type\":\"CODE_TO_TOKEN\",\"realmId\":\"realm-uuid\","
                        + "\"realmName\":\"custos\",\"issuer\":\"https://as.example/realms/custos\",\"clientId\":\"custos-console\",\"userId\":\"user-1\","
                        + "\"sessionId\":\"sess-1\",\"ipAddress\":\"10.0.0.7\",\"details\":{\"grant_type\":\"password\","
                        + "\"refresh_token_id\":\"rt-1\",\"scope\":\"openid profile\",\"token_id\":\"jti-1\"}}",
                json);
    }

    @Test
    void theConsentScreensOutcomeOfALoginIsKept() {
        Event e = login();
        e.setType(EventType.LOGIN);
        e.getDetails().put("consent", "consent_granted");
        String json = text(EventJson.user(e, ISSUER, null));
        assertTrue(json.contains("\"consent\":\"consent_granted\""), json);
        assertFalse(json.contains(CANARY), json);
    }

    @Test
    void userEventCarriesTheUsersFhirResourceWhenKnown() {
        String json = text(EventJson.user(login(), ISSUER, "Practitioner/demo-prac-1"));
        assertTrue(json.contains("\"userId\":\"user-1\",\"fhirUser\":\"Practitioner/demo-prac-1\","), json);
    }

    @Test
    void canaryDetailsNeverLeave() {
        assertFalse(text(EventJson.user(login(), ISSUER, null)).contains(CANARY));
    }

    @Test
    void tokenShapedValuesAreDroppedEvenUnderAllowedKeys() {
        Event e = login();
        e.getDetails().put("token_id", JWT);
        String json = text(EventJson.user(e, ISSUER, null));
        assertFalse(json.contains("eyJ"), json);
        assertFalse(json.contains("\"token_id\""), json);
    }

    @Test
    void userKeyIsRealmAndUser() {
        assertEquals("realm-uuid/user-1", new String(EventJson.user(login(), ISSUER, null).key(), StandardCharsets.UTF_8));
        Event anonymous = login();
        anonymous.setUserId(null);
        assertEquals("realm-uuid", new String(EventJson.user(anonymous, ISSUER, null).key(), StandardCharsets.UTF_8));
    }

    @Test
    void stringsAreEscaped() {
        Event e = login();
        e.setError("a\"b\\c\nd\u0001");
        assertTrue(text(EventJson.user(e, ISSUER, null)).contains("\"error\":\"a\\\"b\\\\c\\nd\\u0001\""));
    }

    private static AdminEvent admin(ResourceType type, String path, String representation) {
        AdminEvent a = new AdminEvent();
        a.setId("adm-1");
        a.setTime(1_700_000_000_000L);
        a.setRealmId("realm-uuid");
        a.setRealmName("custos");
        AuthDetails auth = new AuthDetails();
        auth.setRealmId("master-uuid");
        auth.setClientId("admin-cli");
        auth.setUserId("admin-1");
        auth.setIpAddress("127.0.0.1");
        a.setAuthDetails(auth);
        a.setOperationType(OperationType.DELETE);
        a.setResourceType(type);
        a.setResourcePath(path);
        a.setRepresentation(representation);
        return a;
    }

    @Test
    void adminEventHasOperationPathAndAuthDetails() {
        SpoolRecord r = EventJson.admin(admin(ResourceType.USER, "users/u-9/consents/app", "{\"x\":1}"), true, null);
        String json = text(r);
        assertTrue(json.contains("\"operationType\":\"DELETE\""), json);
        assertTrue(json.contains("\"resourcePath\":\"users/u-9/consents/app\""), json);
        assertTrue(json.contains("\"resourceType\":\"USER\""), json);
        assertTrue(json.contains("\"authDetails\":{\"realmId\":\"master-uuid\",\"clientId\":\"admin-cli\","
                + "\"userId\":\"admin-1\",\"ipAddress\":\"127.0.0.1\"}"), json);
        assertFalse(json.contains("representation"), json);
        assertEquals("realm-uuid/u-9", new String(r.key(), StandardCharsets.UTF_8));
        SpoolRecord roles = EventJson.admin(admin(ResourceType.REALM_ROLE, "roles/x", null), false, null);
        assertEquals("realm-uuid", new String(roles.key(), StandardCharsets.UTF_8));
    }

    @Test
    void representationsAreOffByDefaultAndNeverForCredentialResources() {
        String role = "{\"name\":\"" + CANARY + "\"}";
        assertFalse(text(EventJson.admin(admin(ResourceType.REALM_ROLE, "roles/r", role), false, null)).contains(CANARY));
        assertTrue(text(EventJson.admin(admin(ResourceType.REALM_ROLE, "roles/r", role), true, null)).contains(CANARY));
        for (ResourceType t : new ResourceType[] {ResourceType.USER, ResourceType.CLIENT, ResourceType.COMPONENT,
                ResourceType.IDENTITY_PROVIDER, ResourceType.REALM, ResourceType.AUTHENTICATOR_CONFIG}) {
            assertFalse(text(EventJson.admin(admin(t, "x/1", role), true, null)).contains(CANARY), t.name());
        }
        String secretish = "{\"name\":\"r\",\"attributes\":{\"clientSecret\":[\"" + CANARY + "\"]}}";
        assertFalse(text(EventJson.admin(admin(ResourceType.REALM_ROLE, "roles/r", secretish), true, null)).contains(CANARY));
        String user = "{\"username\":\"u\",\"credentials\":[{\"value\":\"" + CANARY + "\"}]}";
        assertFalse(text(EventJson.admin(admin(ResourceType.REALM_ROLE_MAPPING, "users/u/role-mappings", user), true, null))
                .contains(CANARY));
    }

    @Test
    void pathUser() {
        assertEquals("abc", EventJson.pathUser("users/abc"));
        assertEquals("abc", EventJson.pathUser("/users/abc/logout"));
        assertEquals(null, EventJson.pathUser("clients/abc"));
        assertEquals(null, EventJson.pathUser("users"));
    }
}
