package dev.custos.fhirserver;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.HashMapResourceProvider;
import ca.uhn.fhir.storage.interceptor.balp.BalpAuditCaptureInterceptor;
import ca.uhn.fhir.storage.interceptor.balp.IBalpAuditEventSink;
import java.io.Serial;
import org.hl7.fhir.r4.model.AllergyIntolerance;
import org.hl7.fhir.r4.model.Condition;
import org.hl7.fhir.r4.model.Consent;
import org.hl7.fhir.r4.model.Encounter;
import org.hl7.fhir.r4.model.MedicationRequest;
import org.hl7.fhir.r4.model.Observation;
import org.hl7.fhir.r4.model.Patient;
import org.hl7.fhir.r4.model.Practitioner;

/**
 * The FHIR R4 {@link RestfulServer}: in-memory providers, SMART bearer authentication, scope
 * rules, BALP audit of every read and search, and audit of refusals.
 */
public final class FhirServer extends RestfulServer {
    @Serial
    private static final long serialVersionUID = 1L;

    private final transient ServerConfig config;
    private final transient TokenVerifier verifier;
    private final transient IBalpAuditEventSink sink;

    /**
     * @param fhir the R4 context
     * @param config the settings
     * @param verifier the token verifier
     * @param sink where AuditEvents go
     */
    public FhirServer(FhirContext fhir, ServerConfig config, TokenVerifier verifier, IBalpAuditEventSink sink) {
        super(fhir);
        this.config = config;
        this.verifier = verifier;
        this.sink = sink;
    }

    @Override
    protected void initialize() {
        DemoData.Providers providers = new DemoData.Providers(
                new HashMapResourceProvider<>(getFhirContext(), Patient.class),
                new HashMapResourceProvider<>(getFhirContext(), Practitioner.class),
                new PatientSearchProvider<>(getFhirContext(), Encounter.class),
                new PatientSearchProvider<>(getFhirContext(), Observation.class),
                new PatientSearchProvider<>(getFhirContext(), Condition.class),
                new PatientSearchProvider<>(getFhirContext(), MedicationRequest.class),
                new PatientSearchProvider<>(getFhirContext(), AllergyIntolerance.class),
                new PatientSearchProvider<>(getFhirContext(), Consent.class));
        registerProviders(providers.patients(), providers.practitioners(), providers.encounters(),
                providers.observations(), providers.conditions(), providers.medications(), providers.allergies(),
                providers.consents());
        if (config.seedDemoData()) {
            DemoData.seed(providers);
        }
        setDefaultResponseEncoding(EncodingEnum.JSON);
        registerInterceptor(new BearerAuthInterceptor(verifier, config.issuer()));
        registerInterceptor(new SmartAuthorizationInterceptor());
        registerInterceptor(new BalpAuditCaptureInterceptor(sink, new AuditContextServices(config.issuer())));
        registerInterceptor(new RefusalAuditor(sink, config.issuer()));
    }
}
