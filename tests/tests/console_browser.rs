//! The browser harness against Keycloak itself: a user signs in to Keycloak's own account
//! console through the real login page in headless Chromium, and the signed-in page shows the
//! user's profile. (A realm with Keycloak's defaults: the demo realm file sets its own client
//! scopes, which the account console's single-page app does not get on with.)

mod support;

use anyhow::{ensure, Result};
use custos_tests::unique;

use support::browser::Browser;
use support::keycloak::{kc_url, Kc};

const PASSWORD: &str = "Browser-user-pass-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_in_to_keycloaks_account_console() -> Result<()> {
    let kc = Kc::new();
    let realm = unique("browser").replace('-', "");
    kc.create_realm_with_roles(&realm, 300, &[]).await?;
    kc.create_user(&realm, "carol.browser", "Carol", "Browser", PASSWORD)
        .await?;
    let browser = Browser::start("keycloak-account").await?;
    let account = format!("{}/realms/{realm}/account", kc_url());
    let outcome = async {
        browser.goto(&account).await?;
        browser
            .keycloak_sign_in("carol.browser", PASSWORD, |u| u.starts_with(&account))
            .await?;
        // The account console's personal-info form, filled with the signed-in user's data.
        browser.wait_text("Personal info").await?;
        for (field, want) in [
            ("username", "carol.browser"),
            ("email", "carol.browser@example.org"),
            ("firstName", "Carol"),
        ] {
            let input = browser
                .wait_for(&format!("input#{field}, input[name='{field}']"))
                .await?;
            let value = input.prop("value").await?.unwrap_or_default();
            ensure!(value == want, "{field}: {value:?}, expected {want:?}");
        }
        Ok(())
    }
    .await;
    let outcome = browser.finish(outcome).await;
    kc.delete_realm(&realm).await;
    outcome
}
