package dev.custos.fhirserver;

import ca.uhn.fhir.interceptor.api.Hook;
import ca.uhn.fhir.interceptor.api.Interceptor;
import ca.uhn.fhir.interceptor.api.Pointcut;
import ca.uhn.fhir.rest.api.RestOperationTypeEnum;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.server.exceptions.AuthenticationException;

/**
 * Authenticates every request but the capability statement with a SMART bearer token
 * ({@link TokenVerifier}) and keeps the {@link Caller} on the request. A missing, invalid,
 * expired or revoked token is answered 401 with an OperationOutcome and a
 * {@code WWW-Authenticate: Bearer} challenge; the refused caller stays on the request so that
 * the refusal is audited.
 */
@Interceptor
public final class BearerAuthInterceptor {
    private final TokenVerifier verifier;
    private final String issuer;

    /**
     * @param verifier the token verifier
     * @param issuer the configured issuer (named in anonymous refusals)
     */
    public BearerAuthInterceptor(TokenVerifier verifier, String issuer) {
        this.verifier = verifier;
        this.issuer = issuer;
    }

    /** Hook: runs once the operation is known, before the authorization rules. */
    @Hook(Pointcut.SERVER_INCOMING_REQUEST_POST_PROCESSED)
    public boolean authenticate(RequestDetails request) {
        if (request.getRestOperationType() == RestOperationTypeEnum.METADATA) {
            return true;
        }
        String header = request.getHeader("Authorization");
        if (header == null || !header.regionMatches(true, 0, "Bearer ", 0, 7) || header.substring(7).isBlank()) {
            request.getUserData().put(Caller.USER_DATA_KEY, Caller.anonymous(issuer));
            throw challenge("Missing bearer token", null);
        }
        try {
            Caller caller = verifier.verify(header.substring(7).trim());
            request.getUserData().put(Caller.USER_DATA_KEY, caller);
            return true;
        } catch (TokenVerifier.TokenRejected e) {
            request.getUserData().put(Caller.USER_DATA_KEY, e.caller());
            throw challenge("Invalid bearer token: " + e.getMessage(), "invalid_token");
        }
    }

    private static AuthenticationException challenge(String message, String error) {
        AuthenticationException e = new AuthenticationException(message);
        e.addResponseHeader("WWW-Authenticate", error == null ? "Bearer" : "Bearer error=\"" + error + "\"");
        return e;
    }
}
