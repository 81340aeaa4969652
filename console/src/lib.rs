//! # custos-console
//!
//! The compliance console: server-rendered pages for compliance officers, privacy officers,
//! incident responders and auditors. It is a backend-for-frontend (OAuth 2.0 for
//! Browser-Based Applications): users sign in at the AS through the authorization code flow
//! with PKCE, the tokens stay in the server's session store, and the browser holds only an
//! opaque HttpOnly session cookie. Every page reads the existing APIs (the query API, the
//! consent service's privacy API) server side with the signed-in user's access token, so each
//! page is in the query audit under that user's name; the console never reads ClickHouse.
//!
//! - [`config`]: the `CUSTOS_CONSOLE_*` settings;
//! - [`session`]: sessions, sign-ins in progress, PKCE, CSRF and return-path checks;
//! - [`oidc`]: the relying party (discovery, code exchange, refresh, logout URL);
//! - [`api`]: calls to the APIs with the user's token, problem details kept;
//! - [`app`]: the router, sign-in/sign-out, the session extractor;
//! - [`html`]: the page frame, the page catalogue with roles, shared markup;
//! - [`chart`]: server-rendered SVG charts with a table alternative;
//! - [`pages`]: the pages of each role;
//! - [`service`]: running it.
#![deny(missing_docs)]

pub mod api;
pub mod app;
pub mod chart;
pub mod config;
pub mod html;
pub mod oidc;
pub mod pages;
pub mod service;
pub mod session;

pub use app::{admin_app, app, Console};
