package dev.custos.fhirserver;

/**
 * The extension URLs and code systems of the Custos ingest's FHIR AuditEvent decoder
 * ({@code schemas/src/decode/fhir_audit/}) that this server writes, and the ones it uses
 * internally to carry token facts from the request to the sink.
 */
public final class AuditVocabulary {
    private AuditVocabulary() {}

    /** The HTTP status returned ({@code valueInteger}, on the AuditEvent). */
    public static final String EXT_HTTP_STATUS = "urn:custos:fhir:ext:http-status";
    /** The Custos tenant ({@code valueString}, on the AuditEvent). */
    public static final String EXT_TENANT = "urn:custos:fhir:ext:tenant";
    /** The token's scopes, space separated ({@code valueString}, on the user agent). */
    public static final String EXT_SCOPE = "urn:custos:fhir:ext:scope";
    /** The token's {@code jti} ({@code valueString}; the decoder reads the user's {@code policy[0]} first). */
    public static final String EXT_JTI = "urn:custos:fhir:ext:jti";
    /** The request's {@code User-Agent} ({@code valueString}, on the AuditEvent). */
    public static final String EXT_USER_AGENT = "urn:custos:fhir:ext:user-agent";
    /**
     * Internal: a purpose of use (v3-ActReason code) carried on the user's {@code who} until the
     * sink moves it to the agent's {@code purposeOfUse}; never leaves the server.
     */
    public static final String INTERNAL_PURPOSE = "urn:custos:fhir:internal:purpose-of-use";

    /** v3-ActReason, the purpose-of-use code system. */
    public static final String ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
    /** DICOM, for agent types. */
    public static final String DCM = "http://dicom.nema.org/resources/ontology/DCM";
    /** FHIR restful interactions (the AuditEvent subtype). */
    public static final String RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction";
    /** FHIR AuditEvent types. */
    public static final String AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type";
    /** Object roles of AuditEvent entities. */
    public static final String OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role";
    /** AuditEvent entity types. */
    public static final String ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
    /** FHIR resource types (the searched type of a query entity). */
    public static final String RESOURCE_TYPES = "http://hl7.org/fhir/resource-types";
}
