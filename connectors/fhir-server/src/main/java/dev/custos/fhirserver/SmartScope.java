package dev.custos.fhirserver;

import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * One SMART on FHIR resource scope: {@code context/Type.permissions}, in the v2 form
 * ({@code patient/Observation.rs}, {@code user/*.cruds}) or the v1 form
 * ({@code patient/*.read}, {@code user/Observation.write}, {@code system/*.*}). Scopes with
 * v2 query restrictions ({@code ?category=...}) are not supported and grant nothing.
 *
 * @param context {@code patient}, {@code user} or {@code system}
 * @param resourceType a resource type name, or {@code *}
 * @param read may read instances
 * @param search may search
 * @param create may create
 * @param update may update
 * @param delete may delete
 */
public record SmartScope(
        String context, String resourceType, boolean read, boolean search, boolean create, boolean update,
        boolean delete) {

    private static final Pattern FORM =
            Pattern.compile("^(patient|user|system)/(\\*|[A-Z][A-Za-z]{0,63})\\.([a-z*]+)$");
    private static final Pattern V2_PERMISSIONS = Pattern.compile("^c?r?u?d?s?$");

    /**
     * Parses one scope string.
     *
     * @param scope a scope from the token's {@code scope} claim
     * @return the resource scope, or empty for any other scope ({@code openid}, {@code launch/patient},
     *     a malformed or unsupported one)
     */
    public static Optional<SmartScope> parse(String scope) {
        Matcher m = FORM.matcher(scope);
        if (!m.matches()) {
            return Optional.empty();
        }
        String ctx = m.group(1);
        String type = m.group(2);
        String perms = m.group(3);
        switch (perms) {
            case "read":
                return Optional.of(new SmartScope(ctx, type, true, true, false, false, false));
            case "write":
                return Optional.of(new SmartScope(ctx, type, false, false, true, true, true));
            case "*":
                return Optional.of(new SmartScope(ctx, type, true, true, true, true, true));
            default:
                if (perms.contains("*") || !V2_PERMISSIONS.matcher(perms).matches()) {
                    return Optional.empty();
                }
                return Optional.of(new SmartScope(ctx, type, perms.contains("r"), perms.contains("s"),
                        perms.contains("c"), perms.contains("u"), perms.contains("d")));
        }
    }

    /** The resource scopes among {@code scopes}. */
    public static List<SmartScope> parseAll(List<String> scopes) {
        List<SmartScope> out = new ArrayList<>();
        for (String s : scopes) {
            parse(s).ifPresent(out::add);
        }
        return out;
    }

    /** Whether the scope covers every resource type. */
    public boolean anyType() {
        return "*".equals(resourceType);
    }

    /** Whether the scope is bound to the launch patient's compartment. */
    public boolean patientContext() {
        return "patient".equals(context);
    }
}
