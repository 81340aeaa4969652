//! Golden record of the OpenAPI document served at `/openapi.json`: the document built from
//! the types is compared byte for byte with `tests/golden/openapi.json`, so a refactoring
//! cannot change the published contract unnoticed.
//!
//! After an intended change of the API, regenerate the file with `CUSTOS_BLESS_GOLDEN=1
//! cargo test -p custos-query --test openapi` and review its diff.
#![allow(clippy::unwrap_used)]

use custos_query::openapi::ApiDoc;
use utoipa::OpenApi;

const GOLDEN: &str = "tests/golden/openapi.json";

#[test]
fn openapi_document_matches_the_golden_record() {
    let mut doc = ApiDoc::openapi().to_pretty_json().unwrap();
    doc.push('\n');
    let path = format!("{}/{GOLDEN}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("CUSTOS_BLESS_GOLDEN").is_some() {
        std::fs::write(&path, &doc).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // Line by line first, so a difference names its place.
    for (n, (got, want)) in doc.lines().zip(golden.lines()).enumerate() {
        assert_eq!(got, want, "{GOLDEN}:{} differs", n + 1);
    }
    assert_eq!(doc, golden, "{GOLDEN}: lengths differ");
}
