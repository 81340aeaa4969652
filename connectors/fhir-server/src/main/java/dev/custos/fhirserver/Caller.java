package dev.custos.fhirserver;

import java.util.List;
import java.util.Optional;

/**
 * Who is calling, as far as the bearer token tells: kept on the request for the scope rules
 * and the audit.
 *
 * @param issuer token issuer
 * @param subject {@code sub}
 * @param clientId {@code azp}, else {@code client_id}, else empty
 * @param jti the token id, when the token has one
 * @param sessionId the AS session ({@code sid}), when present
 * @param fhirUser the {@code fhirUser} claim ({@code Practitioner/x}, {@code Patient/y})
 * @param patient the SMART launch patient ({@code patient} claim)
 * @param scopes the granted scopes
 * @param purposeOfUse v3-ActReason codes from a {@code purpose_of_use} claim
 * @param verified whether the token passed every check (a refused token still names its caller)
 */
public record Caller(
        String issuer,
        String subject,
        String clientId,
        Optional<String> jti,
        Optional<String> sessionId,
        Optional<String> fhirUser,
        Optional<String> patient,
        List<String> scopes,
        List<String> purposeOfUse,
        boolean verified) {

    /** The key of the caller in {@code RequestDetails.getUserData()}. */
    public static final String USER_DATA_KEY = Caller.class.getName();

    /** A caller that is not known at all (no token, or a token that does not verify). */
    public static Caller anonymous(String issuer) {
        return new Caller(issuer, "anonymous", "unknown", Optional.empty(), Optional.empty(), Optional.empty(),
                Optional.empty(), List.of(), List.of(), false);
    }

    /** The same caller marked as refused. */
    public Caller refused() {
        return new Caller(issuer, subject, clientId, jti, sessionId, fhirUser, patient, scopes, purposeOfUse, false);
    }
}
