package dev.custos.fhirserver;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.rest.annotation.RequiredParam;
import ca.uhn.fhir.rest.annotation.Search;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.param.ReferenceParam;
import ca.uhn.fhir.rest.server.exceptions.InvalidRequestException;
import ca.uhn.fhir.rest.server.provider.HashMapResourceProvider;
import ca.uhn.fhir.util.FhirTerser;
import java.util.List;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.r4.model.IdType;

/**
 * An in-memory provider of a patient-compartment resource type that also searches by
 * {@code patient} and {@code subject} (as a reference to a Patient): the demo apps' usual
 * {@code Observation?patient=x}. Results pass HAPI's pre-show hooks, so the scope rules and
 * the BALP audit see them.
 *
 * @param <T> the resource type
 */
public class PatientSearchProvider<T extends IBaseResource> extends HashMapResourceProvider<T> {

    /**
     * @param fhir the FHIR context
     * @param type the resource class
     */
    public PatientSearchProvider(FhirContext fhir, Class<T> type) {
        super(fhir, type);
    }

    /**
     * {@code GET [type]?patient=[id]}.
     *
     * @param patient the patient id or {@code Patient/id}
     * @param request the request
     * @return the resources of that patient's compartment
     */
    @Search
    public List<IBaseResource> searchByPatient(
            @RequiredParam(name = "patient") ReferenceParam patient, RequestDetails request) {
        return inCompartment(patient, request);
    }

    /**
     * {@code GET [type]?subject=Patient/[id]}.
     *
     * @param subject a reference to the patient
     * @param request the request
     * @return the resources of that patient's compartment
     */
    @Search
    public List<IBaseResource> searchBySubject(
            @RequiredParam(name = "subject") ReferenceParam subject, RequestDetails request) {
        return inCompartment(subject, request);
    }

    private List<IBaseResource> inCompartment(ReferenceParam ref, RequestDetails request) {
        String type = ref.getResourceType();
        if (type != null && !type.isEmpty() && !"Patient".equals(type)) {
            throw new InvalidRequestException("only references to Patient are searchable here");
        }
        String id = ref.getIdPart();
        if (id == null || id.isBlank()) {
            throw new InvalidRequestException("a patient id is required");
        }
        IdType owner = new IdType("Patient", id);
        FhirTerser terser = getFhirContext().newTerser();
        List<T> matches = getAllResources().stream()
                .filter(r -> terser.isSourceInCompartmentForTarget("Patient", r, owner))
                .toList();
        return fireInterceptorsAndFilterAsNeeded(matches, request);
    }
}
