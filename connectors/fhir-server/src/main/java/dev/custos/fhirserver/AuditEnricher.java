package dev.custos.fhirserver;

import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.UUID;
import org.hl7.fhir.r4.model.AuditEvent;
import org.hl7.fhir.r4.model.Extension;
import org.hl7.fhir.r4.model.StringType;

/**
 * Completes an AuditEvent before it leaves: gives it an id (kept across resends, so the feed
 * and the ingest deduplicate), moves the token facts from the user's {@code who} to where the
 * Custos decoder reads them ({@code jti} to the user agent's {@code policy[0]}, the scopes to
 * the agent, purposes of use to {@code purposeOfUse}, the user agent string to the resource)
 * and adds the tenant.
 */
public final class AuditEnricher {
    private final Optional<String> tenant;

    /**
     * @param tenant Custos tenant to stamp on every event, when set
     */
    public AuditEnricher(Optional<String> tenant) {
        this.tenant = tenant;
    }

    /** Completes {@code event} in place and returns it. */
    public AuditEvent complete(AuditEvent event) {
        if (!event.hasId()) {
            event.setId(UUID.randomUUID().toString());
        }
        for (AuditEvent.AuditEventAgentComponent agent : event.getAgent()) {
            if (!agent.hasWho()) {
                continue;
            }
            List<Extension> carried = new ArrayList<>(agent.getWho().getExtension());
            agent.getWho().getExtension().clear();
            for (Extension ext : carried) {
                String value = ext.getValue() instanceof StringType s ? s.getValue() : null;
                if (value == null) {
                    continue;
                }
                switch (ext.getUrl()) {
                    case AuditVocabulary.EXT_JTI -> agent.getPolicy().add(0, new org.hl7.fhir.r4.model.UriType(value));
                    case AuditVocabulary.EXT_SCOPE -> agent.addExtension(AuditVocabulary.EXT_SCOPE, new StringType(value));
                    case AuditVocabulary.INTERNAL_PURPOSE -> agent.addPurposeOfUse()
                            .addCoding().setSystem(AuditVocabulary.ACT_REASON).setCode(value);
                    case AuditVocabulary.EXT_USER_AGENT -> event.addExtension(
                            AuditVocabulary.EXT_USER_AGENT, new StringType(value));
                    default -> { }
                }
            }
        }
        tenant.ifPresent(t -> {
            if (event.getExtensionByUrl(AuditVocabulary.EXT_TENANT) == null) {
                event.addExtension(AuditVocabulary.EXT_TENANT, new StringType(t));
            }
        });
        return event;
    }
}
