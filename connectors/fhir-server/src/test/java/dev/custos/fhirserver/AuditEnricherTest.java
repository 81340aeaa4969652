package dev.custos.fhirserver;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Optional;
import org.hl7.fhir.r4.model.AuditEvent;
import org.hl7.fhir.r4.model.StringType;
import org.junit.jupiter.api.Test;

class AuditEnricherTest {

    private static Caller caller() {
        return new Caller("https://as.example/realms/r", "user-1", "app-1", Optional.of("jti-1"), Optional.of("sid-1"),
                Optional.of("Practitioner/p1"), Optional.empty(), List.of("openid", "user/*.rs"), List.of("TREAT"),
                true);
    }

    @Test
    void token_facts_move_to_where_the_decoder_reads_them() {
        AuditEvent event = new AuditEvent();
        AuditEvent.AuditEventAgentComponent client = event.addAgent();
        client.setWho(AuditContextServices.clientWho(caller()));
        AuditEvent.AuditEventAgentComponent user = event.addAgent();
        user.setRequestor(true);
        user.setWho(AuditContextServices.userWho(caller()));
        user.getWho().addExtension(AuditVocabulary.EXT_USER_AGENT, new StringType("curl/8"));

        new AuditEnricher(Optional.of("general")).complete(event);

        assertTrue(event.hasId());
        assertEquals("jti-1", user.getPolicy().get(0).getValue());
        assertEquals("openid user/*.rs", ((StringType) user.getExtensionByUrl(AuditVocabulary.EXT_SCOPE).getValue()).getValue());
        assertEquals("TREAT", user.getPurposeOfUseFirstRep().getCodingFirstRep().getCode());
        assertEquals(AuditVocabulary.ACT_REASON, user.getPurposeOfUseFirstRep().getCodingFirstRep().getSystem());
        assertTrue(user.getWho().getExtension().isEmpty(), "nothing internal stays on who");
        assertEquals("Practitioner/p1", user.getWho().getReference());
        assertEquals("user-1", user.getWho().getIdentifier().getValue());
        assertEquals("https://as.example/realms/r", user.getWho().getIdentifier().getSystem());
        assertEquals("app-1", client.getWho().getIdentifier().getValue());
        assertEquals("general", ((StringType) event.getExtensionByUrl(AuditVocabulary.EXT_TENANT).getValue()).getValue());
        assertEquals("curl/8", ((StringType) event.getExtensionByUrl(AuditVocabulary.EXT_USER_AGENT).getValue()).getValue());
    }

    @Test
    void an_id_survives_a_second_completion() {
        AuditEvent event = new AuditEvent();
        AuditEnricher enricher = new AuditEnricher(Optional.empty());
        String id = enricher.complete(event).getIdElement().getIdPart();
        assertEquals(id, enricher.complete(event).getIdElement().getIdPart());
        assertEquals(null, event.getExtensionByUrl(AuditVocabulary.EXT_TENANT));
    }
}
