//! Writes the signed seeds of `fuzz/corpus/`: a task token and agent assertions made with fresh
//! keys. Their signatures never verify against a fuzzing run's own keys, and they expire; the
//! targets treat them as near-valid input (well-formed JWTs with real EdDSA signatures).
//!
//! `cargo run -p custos-fuzz --example seeds`

use std::path::Path;

use custos_crypto::jwt::sign_assertion;
use custos_crypto::{AgentKey, ServerKey, TokenIssuer};
use custos_fuzz::{AUDIENCE, ISSUER, NOW};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let write = |target: &str, name: &str, text: &str| -> std::io::Result<()> {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), text)
    };

    let issuer = TokenIssuer::new(
        ServerKey::new(AgentKey::generate()?),
        ISSUER.to_owned(),
        AUDIENCE.to_owned(),
    );
    let task = custos_core::Task {
        id: custos_core::TaskId::parse("task_01").ok_or("task id")?,
        agent: "agent-docs-review-dev".into(),
        agent_id: custos_core::AgentId::parse("agent_01").ok_or("agent id")?,
        template: "docs-review".into(),
        template_version: 1,
        started_by: "admin".into(),
        on_behalf_of: "alice@example.com".into(),
        purpose: None,
        created_at: NOW * 1000,
        expires_at: (NOW + 1800) * 1000,
        state: custos_core::TaskState::Active,
        ended_at: None,
        ended_by: None,
        tainted_at: None,
        tainted_by: None,
    };
    let (token, claims) = issuer.issue(&task, NOW, NOW + 1800)?;
    write("task_token", "issued.jwt", &token)?;
    write(
        "task_token",
        "claims.json",
        &serde_json::to_string(&claims)?,
    )?;

    let agent = AgentKey::generate()?;
    let assertion = sign_assertion(&agent, "agent-docs-review-dev", ISSUER, NOW, 60)?;
    write("assertion", "signed.jwt", &assertion)?;
    let long = sign_assertion(&agent, "agent-docs-review-dev", ISSUER, NOW, 3600)?;
    write("assertion", "signed-too-long.jwt", &long)?;
    write("public_key", "generated.pem", &agent.public_key_pem())?;
    Ok(())
}
