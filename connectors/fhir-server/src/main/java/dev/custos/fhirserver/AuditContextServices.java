package dev.custos.fhirserver;

import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.storage.interceptor.balp.IBalpAuditContextServices;
import jakarta.annotation.Nonnull;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.instance.model.api.IIdType;
import org.hl7.fhir.r4.model.Reference;
import org.hl7.fhir.r4.model.StringType;

/**
 * Tells HAPI's BALP interceptor who called: the client is the token's {@code azp}, the user its
 * {@code sub} (identifier system = issuer, as in BALP's OAuth mapping) with {@code fhirUser} as
 * the reference. The token's {@code jti}, scopes and purposes of use ride along as extensions
 * of the user's {@code who} and are put where the Custos decoder reads them by
 * {@link AuditEnricher}. Resource ids are written relative ({@code Patient/x}).
 */
public final class AuditContextServices implements IBalpAuditContextServices {

    /** The caller of a request (anonymous when the request carried no verified token). */
    static Caller caller(RequestDetails request, String issuer) {
        Object data = request.getUserData().get(Caller.USER_DATA_KEY);
        return data instanceof Caller c ? c : Caller.anonymous(issuer);
    }

    private final String issuer;

    /**
     * @param issuer the configured token issuer (used for callers without a token)
     */
    public AuditContextServices(String issuer) {
        this.issuer = issuer;
    }

    @Override
    @Nonnull
    public Reference getAgentClientWho(RequestDetails request) {
        return clientWho(caller(request, issuer));
    }

    @Override
    @Nonnull
    public Reference getAgentUserWho(RequestDetails request) {
        Reference who = userWho(caller(request, issuer));
        String agent = request.getHeader("User-Agent");
        if (agent != null && !agent.isBlank()) {
            who.addExtension(AuditVocabulary.EXT_USER_AGENT, new StringType(truncate(agent, 256)));
        }
        return who;
    }

    @Override
    @Nonnull
    public String massageResourceIdForStorage(
            @Nonnull RequestDetails request, @Nonnull IBaseResource resource, @Nonnull IIdType id) {
        return id.toUnqualifiedVersionless().getValue();
    }

    /** The client application's {@code who}. */
    static Reference clientWho(Caller caller) {
        Reference who = new Reference();
        who.getIdentifier().setSystem(caller.issuer()).setValue(caller.clientId());
        return who;
    }

    /** The user's {@code who}, with the token facts as extensions. */
    static Reference userWho(Caller caller) {
        Reference who = new Reference();
        caller.fhirUser().ifPresent(who::setReference);
        who.getIdentifier().setSystem(caller.issuer()).setValue(caller.subject());
        caller.jti().ifPresent(j -> who.addExtension(AuditVocabulary.EXT_JTI, new StringType(j)));
        if (!caller.scopes().isEmpty()) {
            who.addExtension(AuditVocabulary.EXT_SCOPE, new StringType(String.join(" ", caller.scopes())));
        }
        for (String p : caller.purposeOfUse()) {
            who.addExtension(AuditVocabulary.INTERNAL_PURPOSE, new StringType(p));
        }
        return who;
    }

    private static String truncate(String v, int max) {
        return v.length() <= max ? v : v.substring(0, max);
    }
}
