//! A switchable TCP proxy on 127.0.0.1: forwards to a target while up, refuses connections
//! while down (a fault in front of Keycloak, for the consent service's retries).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use custos_tests::free_port;

/// Forwards 127.0.0.1:port to `target` while up; refuses connections while down.
pub struct Proxy {
    port: u16,
    target: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy (down) on a free port to `target` (`http://host:port`).
    pub fn new(target: &str) -> Proxy {
        Proxy {
            port: free_port(),
            target: target.to_owned(),
            task: None,
        }
    }

    /// Starts forwarding.
    pub async fn up(&mut self) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await?;
        let target: SocketAddr = self
            .target
            .trim_start_matches("http://")
            .parse()
            .context("the proxy's target must be http://host:port")?;
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
        Ok(())
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
