package org.custos.keycloak;

import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.regex.Pattern;
import org.keycloak.events.admin.ResourceType;

/**
 * Decides what of an event may leave Keycloak. Details pass through an allow-list of keys the
 * Custos decoder reads (plus a few protocol names that cannot hold a secret); every other key
 * is dropped, and so is any allowed value that looks like a token. Admin representations pass
 * only when enabled, only for resource types that hold no credentials, and only when they
 * mention no secret-like field.
 */
final class SecretFilter {
    /** Detail keys that may be published. */
    static final Set<String> ALLOWED_DETAILS = Set.of(
            // Read by the Custos decoder.
            "token_id",
            "refresh_token_id",
            "token_type",
            "scope",
            "granted_scopes",
            "granted_client",
            "revoked_client",
            // What the consent screen did on a LOGIN (consent_granted, persisted_consent,
            // no_consent_required): how a consent given at sign-in becomes known.
            "consent",
            // Protocol names, never secrets.
            "auth_method",
            "auth_type",
            "grant_type",
            "response_type",
            "response_mode",
            "client_auth_method",
            "refresh_token_type");

    /** Longest detail value published; longer values are dropped. */
    static final int MAX_DETAIL_LENGTH = 1024;

    /** Admin resource types whose representation may be published when enabled. */
    static final Set<String> REPRESENTATION_TYPES = Set.of(
            "REALM_ROLE",
            "REALM_ROLE_MAPPING",
            "REALM_SCOPE_MAPPING",
            "CLIENT_ROLE",
            "CLIENT_ROLE_MAPPING",
            "CLIENT_SCOPE",
            "CLIENT_SCOPE_MAPPING",
            "CLIENT_SCOPE_CLIENT_MAPPING",
            "GROUP",
            "GROUP_MEMBERSHIP",
            "PROTOCOL_MAPPER",
            "AUTH_FLOW",
            "AUTH_EXECUTION_FLOW",
            "AUTH_EXECUTION",
            "REQUIRED_ACTION");

    /** Three base64url segments joined by dots: a JWT (or JWS/JWE compact form). */
    private static final Pattern JWT =
            Pattern.compile("[A-Za-z0-9_-]{8,}\\.[A-Za-z0-9_-]{8,}\\.[A-Za-z0-9_-]*");

    private static final Pattern SECRET_WORDS =
            Pattern.compile("secret|passw|credential|token|private.?key|bearer|otp");

    private SecretFilter() {}

    /** The allowed subset of {@code details} (never null). */
    static Map<String, String> details(Map<String, String> details) {
        Map<String, String> kept = new LinkedHashMap<>();
        if (details == null) {
            return kept;
        }
        for (Map.Entry<String, String> e : details.entrySet()) {
            String key = e.getKey();
            String value = e.getValue();
            if (key == null || value == null || !ALLOWED_DETAILS.contains(key)) {
                continue;
            }
            if (value.length() > MAX_DETAIL_LENGTH || looksLikeToken(value)) {
                continue;
            }
            kept.put(key, value);
        }
        return kept;
    }

    /**
     * The representation to publish, or null: only when {@code enabled}, for a resource type in
     * {@link #REPRESENTATION_TYPES}, and when it holds nothing that looks like a secret.
     */
    static String representation(boolean enabled, ResourceType type, String path, String representation) {
        if (!enabled || representation == null || type == null) {
            return null;
        }
        if (!REPRESENTATION_TYPES.contains(type.name())) {
            return null;
        }
        String lowerPath = path == null ? "" : path.toLowerCase(Locale.ROOT);
        if (lowerPath.startsWith("users") || lowerPath.contains("secret") || lowerPath.contains("credential")) {
            return null;
        }
        if (SECRET_WORDS.matcher(representation.toLowerCase(Locale.ROOT)).find() || looksLikeToken(representation)) {
            return null;
        }
        return representation;
    }

    /** Whether {@code value} contains something shaped like a compact JWT. */
    static boolean looksLikeToken(String value) {
        return JWT.matcher(value).find();
    }
}
