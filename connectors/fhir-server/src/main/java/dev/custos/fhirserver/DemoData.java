package dev.custos.fhirserver;

import ca.uhn.fhir.rest.server.provider.HashMapResourceProvider;
import java.util.Date;
import org.hl7.fhir.r4.model.AllergyIntolerance;
import org.hl7.fhir.r4.model.CodeableConcept;
import org.hl7.fhir.r4.model.Condition;
import org.hl7.fhir.r4.model.Consent;
import org.hl7.fhir.r4.model.Encounter;
import org.hl7.fhir.r4.model.Enumerations;
import org.hl7.fhir.r4.model.MedicationRequest;
import org.hl7.fhir.r4.model.Observation;
import org.hl7.fhir.r4.model.Patient;
import org.hl7.fhir.r4.model.Practitioner;
import org.hl7.fhir.r4.model.Quantity;
import org.hl7.fhir.r4.model.Reference;

/**
 * Fictitious demo records loaded at start: three patients ({@code demo-pat-2001} is the one the
 * demo patient user {@code pat.patient} launches with), a practitioner ({@code demo-prac-1},
 * the demo clinician's {@code fhirUser}), and for each patient an encounter, observations, a
 * condition, a medication request, an allergy and a consent.
 */
public final class DemoData {
    private DemoData() {}

    /** The demo patients' ids. */
    public static final String[] PATIENTS = {"demo-pat-2001", "demo-pat-2002", "demo-pat-2003"};

    private static final String LOINC = "http://loinc.org";
    private static final String SNOMED = "http://snomed.info/sct";
    private static final String RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm";

    /** The providers the demo data goes into. */
    public record Providers(
            HashMapResourceProvider<Patient> patients,
            HashMapResourceProvider<Practitioner> practitioners,
            HashMapResourceProvider<Encounter> encounters,
            HashMapResourceProvider<Observation> observations,
            HashMapResourceProvider<Condition> conditions,
            HashMapResourceProvider<MedicationRequest> medications,
            HashMapResourceProvider<AllergyIntolerance> allergies,
            HashMapResourceProvider<Consent> consents) {}

    /** Stores the demo records (without audit: no request is involved). */
    public static void seed(Providers p) {
        Practitioner prac = new Practitioner();
        prac.setId("demo-prac-1");
        prac.addName().setFamily("Demo").addGiven("Dora");
        p.practitioners().store(prac);
        String[][] names = {{"Patient", "Pat"}, {"Example", "Erin"}, {"Sample", "Sam"}};
        for (int i = 0; i < PATIENTS.length; i++) {
            String id = PATIENTS[i];
            Reference subject = new Reference("Patient/" + id);
            Patient pat = new Patient();
            pat.setId(id);
            pat.addIdentifier().setSystem("urn:custos:demo:mrn").setValue("MRN-" + (2001 + i));
            pat.addName().setFamily(names[i][0]).addGiven(names[i][1]);
            pat.setGender(i % 2 == 0 ? Enumerations.AdministrativeGender.FEMALE : Enumerations.AdministrativeGender.MALE);
            pat.addGeneralPractitioner(new Reference("Practitioner/demo-prac-1"));
            p.patients().store(pat);

            Encounter enc = new Encounter();
            enc.setId("demo-enc-" + (2001 + i));
            enc.setStatus(Encounter.EncounterStatus.FINISHED);
            enc.getClass_().setSystem("http://terminology.hl7.org/CodeSystem/v3-ActCode").setCode("AMB");
            enc.setSubject(subject);
            enc.addParticipant().setIndividual(new Reference("Practitioner/demo-prac-1"));
            p.encounters().store(enc);

            observation(p, id + "-hr", subject, enc, "8867-4", "Heart rate", 62 + 7 * i, "/min");
            observation(p, id + "-glucose", subject, enc, "2339-0", "Glucose", 90 + 11 * i, "mg/dL");
            observation(p, id + "-weight", subject, enc, "29463-7", "Body weight", 61 + 9 * i, "kg");

            Condition cond = new Condition();
            cond.setId(id + "-cond");
            cond.setSubject(subject);
            cond.setEncounter(new Reference("Encounter/" + enc.getIdElement().getIdPart()));
            cond.setCode(concept(SNOMED, i == 0 ? "38341003" : "44054006", i == 0 ? "Hypertension" : "Diabetes mellitus type 2"));
            p.conditions().store(cond);

            MedicationRequest med = new MedicationRequest();
            med.setId(id + "-med");
            med.setStatus(MedicationRequest.MedicationRequestStatus.ACTIVE);
            med.setIntent(MedicationRequest.MedicationRequestIntent.ORDER);
            med.setSubject(subject);
            med.setMedication(concept(RXNORM, i == 0 ? "314076" : "860975", i == 0 ? "lisinopril 10 MG" : "metformin 500 MG"));
            med.setRequester(new Reference("Practitioner/demo-prac-1"));
            p.medications().store(med);

            AllergyIntolerance allergy = new AllergyIntolerance();
            allergy.setId(id + "-allergy");
            allergy.setPatient(subject);
            allergy.setCode(concept(SNOMED, "91936005", "Allergy to penicillin"));
            p.allergies().store(allergy);

            Consent consent = new Consent();
            consent.setId(id + "-consent");
            consent.setStatus(Consent.ConsentState.ACTIVE);
            consent.getScope().addCoding().setSystem("http://terminology.hl7.org/CodeSystem/consentscope").setCode("patient-privacy");
            consent.addCategory(concept(LOINC, "59284-0", "Patient Consent"));
            consent.setPatient(subject);
            consent.setDateTime(new Date());
            consent.getPolicyRule().addCoding().setSystem("http://terminology.hl7.org/CodeSystem/consentpolicycodes").setCode("hipaa-auth");
            p.consents().store(consent);
        }
    }

    private static void observation(Providers p, String id, Reference subject, Encounter enc, String loinc,
            String display, double value, String unit) {
        Observation obs = new Observation();
        obs.setId(id);
        obs.setStatus(Observation.ObservationStatus.FINAL);
        obs.addCategory().addCoding().setSystem("http://terminology.hl7.org/CodeSystem/observation-category")
                .setCode(loinc.equals("2339-0") ? "laboratory" : "vital-signs");
        obs.setCode(concept(LOINC, loinc, display));
        obs.setSubject(subject);
        obs.setEncounter(new Reference("Encounter/" + enc.getIdElement().getIdPart()));
        obs.setEffective(new org.hl7.fhir.r4.model.DateTimeType(new Date()));
        obs.setValue(new Quantity().setValue(value).setUnit(unit).setSystem("http://unitsofmeasure.org").setCode(unit));
        p.observations().store(obs);
    }

    private static CodeableConcept concept(String system, String code, String display) {
        return new CodeableConcept().addCoding(new org.hl7.fhir.r4.model.Coding(system, code, display)).setText(display);
    }
}
