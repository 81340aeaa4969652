package dev.custos.fhirserver;

import ca.uhn.fhir.interceptor.api.Hook;
import ca.uhn.fhir.interceptor.api.Interceptor;
import ca.uhn.fhir.interceptor.api.Pointcut;
import ca.uhn.fhir.rest.api.RestOperationTypeEnum;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.server.exceptions.BaseServerResponseException;
import ca.uhn.fhir.storage.interceptor.balp.IBalpAuditEventSink;
import java.util.Date;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import org.hl7.fhir.r4.model.AuditEvent;
import org.hl7.fhir.r4.model.IntegerType;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Audits refused requests (401 and 403), which HAPI's BALP interceptor does not see: one
 * AuditEvent in the BALP shape with outcome {@code 4} (minor failure, the Custos decoder's
 * {@code deny}), the HTTP status in the {@code http-status} extension, the caller as far as the
 * token tells, and the target (the instance read, or the searched type and patient).
 */
@Interceptor
public final class RefusalAuditor {
    private static final Logger LOG = LoggerFactory.getLogger(RefusalAuditor.class);
    private static final List<String> PATIENT_PARAMS = List.of("patient", "subject", "_id");

    private final IBalpAuditEventSink sink;
    private final String issuer;

    /**
     * @param sink where the AuditEvents go
     * @param issuer the configured issuer (for callers without a token)
     */
    public RefusalAuditor(IBalpAuditEventSink sink, String issuer) {
        this.sink = sink;
        this.issuer = issuer;
    }

    /** Hook: sees every exception before HAPI renders it; never changes the answer. */
    @Hook(Pointcut.SERVER_HANDLE_EXCEPTION)
    public boolean onException(RequestDetails request, BaseServerResponseException exception) {
        int status = exception.getStatusCode();
        if (status != 401 && status != 403) {
            return true;
        }
        RestOperationTypeEnum op = request.getRestOperationType();
        if (op == null || op.getCode() == null) {
            LOG.warn("refused request (HTTP {}) of an unknown interaction is not audited", status);
            return true;
        }
        try {
            sink.recordAuditEvent(build(request, status, op));
        } catch (RuntimeException e) {
            LOG.error("could not audit a refused request: {}", e.getClass().getSimpleName());
        }
        return true;
    }

    private AuditEvent build(RequestDetails request, int status, RestOperationTypeEnum op) {
        Caller caller = AuditContextServices.caller(request, issuer);
        AuditEvent event = new AuditEvent();
        event.getType().setSystem(AuditVocabulary.AUDIT_EVENT_TYPE).setCode("rest").setDisplay("Restful Operation");
        String code = op == RestOperationTypeEnum.GET_PAGE ? "search-type" : op.getCode();
        event.addSubtype().setSystem(AuditVocabulary.RESTFUL_INTERACTION).setCode(code);
        event.setAction(action(op));
        event.setOutcome(AuditEvent.AuditEventOutcome._4);
        event.setOutcomeDesc(status == 401 ? "authentication failed" : "outside the granted scopes");
        event.addExtension(AuditVocabulary.EXT_HTTP_STATUS, new IntegerType(status));
        event.setRecorded(new Date());
        event.getSource().getObserver().setDisplay(request.getFhirServerBase());

        AuditEvent.AuditEventAgentComponent client = event.addAgent();
        client.getType().addCoding().setSystem(AuditVocabulary.DCM).setCode("110150").setDisplay("Application");
        client.setWho(AuditContextServices.clientWho(caller));
        client.setRequestor(false);
        String address = request instanceof ca.uhn.fhir.rest.server.servlet.ServletRequestDetails s
                ? s.getServletRequest().getRemoteAddr() : null;
        if (address != null) {
            client.getNetwork().setAddress(address).setType(AuditEvent.AuditEventAgentNetworkType._2);
        }

        AuditEvent.AuditEventAgentComponent user = event.addAgent();
        user.getType().addCoding().setSystem("http://terminology.hl7.org/CodeSystem/v3-ParticipationType")
                .setCode("IRCP").setDisplay("information recipient");
        user.setWho(AuditContextServices.userWho(caller));
        user.setRequestor(true);

        String type = request.getResourceName();
        Optional<String> patient = Optional.empty();
        if (request.getId() != null && request.getId().hasIdPart() && type != null) {
            String ref = type + "/" + request.getId().getIdPart();
            entity(event, "2", "4", ref);
            if ("Patient".equals(type)) {
                patient = Optional.of(ref);
            }
        } else if (type != null) {
            AuditEvent.AuditEventEntityComponent query = event.addEntity();
            query.getType().setSystem(AuditVocabulary.RESOURCE_TYPES).setCode(type);
            query.getRole().setSystem(AuditVocabulary.OBJECT_ROLE).setCode("24").setDisplay("Query");
            patient = searchedPatient(request.getParameters(), type);
        }
        patient.ifPresent(p -> entity(event, "1", "1", p));
        return event;
    }

    private static void entity(AuditEvent event, String type, String role, String reference) {
        AuditEvent.AuditEventEntityComponent e = event.addEntity();
        e.getType().setSystem(AuditVocabulary.ENTITY_TYPE).setCode(type);
        e.getRole().setSystem(AuditVocabulary.OBJECT_ROLE).setCode(role);
        e.getWhat().setReference(reference);
    }

    /** The patient a search names ({@code patient=}, {@code subject=Patient/x}, or {@code _id} on Patient). */
    private static Optional<String> searchedPatient(Map<String, String[]> params, String type) {
        for (String name : PATIENT_PARAMS) {
            String[] values = params.get(name);
            if (values == null || values.length == 0 || values[0].isBlank()) {
                continue;
            }
            String v = values[0].split(",")[0].trim();
            if ("_id".equals(name) && !"Patient".equals(type)) {
                continue;
            }
            if ("subject".equals(name) && !v.startsWith("Patient/")) {
                continue;
            }
            String id = v.startsWith("Patient/") ? v.substring("Patient/".length()) : v;
            if (id.matches("[A-Za-z0-9\\-.]{1,64}")) {
                return Optional.of("Patient/" + id);
            }
        }
        return Optional.empty();
    }

    private static AuditEvent.AuditEventAction action(RestOperationTypeEnum op) {
        return switch (op) {
            case CREATE -> AuditEvent.AuditEventAction.C;
            case UPDATE, PATCH -> AuditEvent.AuditEventAction.U;
            case DELETE -> AuditEvent.AuditEventAction.D;
            case SEARCH_TYPE, SEARCH_SYSTEM, GET_PAGE -> AuditEvent.AuditEventAction.E;
            default -> AuditEvent.AuditEventAction.R;
        };
    }
}
