//! The OpenAPI 3.1 document served at `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::Problem;
use crate::reports;

struct Bearer;

/// Adds the catalogued reports' paths and schemas ([`reports::Paths`]).
struct Catalogue;

impl Modify for Catalogue {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.merge(reports::Paths::openapi());
    }
}

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Custos query API",
        description = "Audited HIPAA access reports over the Custos audit store. Every answered report query is itself recorded (see /v1/reports/query-audit). Auditors verify the hash chains and fetch membership proofs under /v1/integrity; the checkpoint public keys are at /.well-known/custos-checkpoint-jwks.json. Incident responders work the detectors' alerts under /v1/alerts; compliance officers review break-glass openings under /v1/break-glass/reviews. Errors are application/problem+json, under /fhir FHIR OperationOutcomes (application/fhir+json)."
    ),
    paths(
        crate::fhir::capability::metadata,
        crate::fhir::search,
        crate::fhir::read::read,
        crate::integrity::verify_chains,
        crate::ledger::verify_ledger,
        crate::integrity::proof,
        crate::integrity::checkpoint_jwks,
        crate::alerts::list::list_alerts,
        crate::alerts::detail::alert_detail,
        crate::alerts::actions::acknowledge,
        crate::alerts::actions::assign,
        crate::alerts::actions::close,
        crate::alerts::actions::reopen,
        crate::reviews::list_reviews,
        crate::reviews::decide_review,
    ),
    components(schemas(
        Problem,
        crate::integrity::VerifyAnswer,
        crate::integrity::ChainResult,
        crate::integrity::Break,
        crate::integrity::CheckpointProblem,
        crate::integrity::ProofAnswer,
        crate::integrity::ProofCheckpoint,
        crate::integrity::ProofChecks,
        crate::integrity::Link,
        crate::ledger::LedgerAnswer,
        crate::ledger::LedgerTable,
        crate::ledger::LedgerFinding,
        custos_schemas::records::AlertRow,
        custos_schemas::records::AlertActionRow,
        custos_schemas::records::ReviewDecisionRow,
        custos_schemas::records::EventRow,
        crate::alerts::AlertItem,
        crate::alerts::AlertLinks,
        crate::alerts::list::AlertPage,
        crate::alerts::detail::AlertDetail,
        crate::alerts::actions::ActionBody,
        crate::alerts::actions::ActionAnswer,
        crate::reviews::ReviewItem,
        crate::reviews::ReviewPage,
        crate::reviews::DecisionBody,
        crate::reviews::DecisionAnswer
    )),
    modifiers(&Bearer, &Catalogue)
)]
pub struct ApiDoc;
