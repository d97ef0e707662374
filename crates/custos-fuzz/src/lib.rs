//! Fuzz targets: one function per parser that reads bytes from the network.
//!
//! Every target takes arbitrary bytes and must never panic. Where a parser promises something
//! about what it accepts (a verified token is inside its validity window, a parsed duration
//! formats and parses back to itself), the target asserts it, so a broken promise is a crash too.
//!
//! The same functions run two ways: under libFuzzer from the cargo-fuzz project in `fuzz/`
//! (nightly), and on stable from this crate's integration tests, which replay the seed corpus in
//! `fuzz/corpus/<target>/` and feed each target arbitrary bytes with proptest.
//!
//! Not covered: the `Mcp-Name` header decoder and the upstream SSE framing are private to
//! `custos-gateway`, so they are reached only through its own tests.

use std::sync::OnceLock;

use aws_lc_rs::signature::Ed25519KeyPair;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use custos_core::duration::format_duration;
use custos_core::resource::parse_documents;
use custos_core::{ExposedTool, Resource, parse_duration};
use custos_crypto::jwt::{MAX_ASSERTION_SECS, SKEW_SECS, assertion_issuer, verify_assertion};
use custos_crypto::{AgentKey, ServerKey, TokenIssuer, jwk_thumbprint, parse_public_key_pem};
use custos_gateway::jsonrpc::{Message, classify};
use serde_json::Value;

/// The issuer URL of the fuzzing [`TokenIssuer`]; also the audience of agent assertions.
pub const ISSUER: &str = "http://127.0.0.1:8470";

/// The audience of the fuzzing issuer's task tokens.
pub const AUDIENCE: &str = "http://127.0.0.1:8470/mcp";

/// The fixed "now" (Unix seconds) the token targets verify at, so runs are reproducible.
pub const NOW: i64 = 1_796_000_000;

/// A fuzz target: any bytes in, never a panic out.
pub type Target = fn(&[u8]);

/// Every target by name; the name is also its corpus directory and its `fuzz/fuzz_targets` file.
pub const TARGETS: &[(&str, Target)] = &[
    ("jsonrpc", jsonrpc),
    ("task_token", task_token),
    ("assertion", assertion),
    ("yaml", yaml),
    ("duration", duration),
    ("tool_name", tool_name),
    ("public_key", public_key),
];

// Times a task token is checked at. `verify` does no arithmetic on `now`, so the extremes are fair.
const TOKEN_TIMES: [i64; 3] = [i64::MIN, NOW, i64::MAX];

struct Fixture {
    issuer: TokenIssuer,
    server_kid: String,
    server_signer: Ed25519KeyPair,
    agent_public: [u8; 32],
    agent_signer: Ed25519KeyPair,
}

// Keys are generated once per process: key generation is slow next to one target run, and a fresh
// key per run would make no run comparable with another.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = AgentKey::generate().expect("generate the server key");
        let server_signer = signer(&server);
        let server = ServerKey::new(server);
        let server_kid = server.kid().to_owned();
        let agent = AgentKey::generate().expect("generate the agent key");
        Fixture {
            issuer: TokenIssuer::new(server, ISSUER.to_owned(), AUDIENCE.to_owned()),
            server_kid,
            server_signer,
            agent_public: agent.public_key(),
            agent_signer: signer(&agent),
        }
    })
}

// `AgentKey` signs only the claims types it knows; the targets need to sign arbitrary payloads,
// so they hold the same key as a raw signer.
fn signer(key: &AgentKey) -> Ed25519KeyPair {
    let pem = pem::parse(key.to_pkcs8_pem().as_bytes()).expect("our own PKCS#8 PEM parses");
    Ed25519KeyPair::from_pkcs8(pem.contents()).expect("our own PKCS#8 key loads")
}

// A compact JWS over `payload` as given: the only way to reach the checks behind the signature.
fn sign_compact(signer: &Ed25519KeyPair, header: &str, payload: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = signer.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// An MCP request body: JSON, then [`classify`], as the gateway does with every POST to `/mcp`.
pub fn jsonrpc(data: &[u8]) {
    let Ok(msg) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Ok(Message::Request {
        id,
        params: Some(params),
        ..
    }) = classify(&msg)
    {
        assert!(params.is_object(), "classify accepted non-object params");
        assert!(id.is_string() || id.is_i64() || id.is_u64(), "bad id kept");
    }
}

/// A bearer task token presented to `/mcp`, and the same bytes as the claims of a token signed
/// with the issuer's own key (what an attacker cannot forge, but what [`TokenIssuer::verify`] must
/// still handle without panicking).
pub fn task_token(data: &[u8]) {
    let f = fixture();
    if let Ok(text) = std::str::from_utf8(data) {
        for now in TOKEN_TIMES {
            let _ = f.issuer.verify(text, now);
        }
    }
    let header = format!(
        r#"{{"alg":"EdDSA","kid":"{}","typ":"at+jwt"}}"#,
        f.server_kid
    );
    let token = sign_compact(&f.server_signer, &header, data);
    for now in TOKEN_TIMES {
        if let Ok(c) = f.issuer.verify(&token, now) {
            assert!(
                c.nbf <= now && now < c.exp,
                "token accepted outside its window"
            );
            assert!(
                c.iss == ISSUER && c.aud == AUDIENCE,
                "token for someone else"
            );
        }
    }
}

/// An agent's assertion sent to the token endpoint: [`assertion_issuer`] reads who it claims to
/// be, [`verify_assertion`] checks it against that agent's key. The bytes are also signed as the
/// claims of an assertion by the registered agent key: a registered agent can send any claims.
pub fn assertion(data: &[u8]) {
    let f = fixture();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = assertion_issuer(text);
        let _ = verify_assertion(text, &f.agent_public, ISSUER, NOW);
    }
    let token = sign_compact(&f.agent_signer, r#"{"typ":"JWT","alg":"EdDSA"}"#, data);
    let _ = assertion_issuer(&token);
    if let Ok(c) = verify_assertion(&token, &f.agent_public, ISSUER, NOW) {
        let (iat, exp) = (i128::from(c.iat), i128::from(c.exp));
        let now = i128::from(NOW);
        assert!(c.aud == ISSUER, "assertion for someone else");
        assert!(
            now < exp && iat <= now + i128::from(SKEW_SECS),
            "outside its window"
        );
        assert!(
            exp - iat <= i128::from(MAX_ASSERTION_SECS),
            "lives too long"
        );
    }
}

/// A resource file applied through the admin API. What is accepted must also survive the store's
/// round trip (`spec_json` written, `from_spec_json` read back on restart) unchanged.
pub fn yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(resources) = parse_documents(text) else {
        return;
    };
    for r in &resources {
        let back = Resource::from_spec_json(r.kind(), r.spec_json());
        assert_eq!(back.as_ref(), Ok(r), "resource changed through the store");
    }
}

/// A duration as written in resource files and API parameters (`30m`, `1h30m`). An accepted
/// duration formats and parses back to itself.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(text) {
        assert_eq!(parse_duration(&format_duration(d)), Ok(d), "round trip");
    }
}

/// A tool name in a `tools/call` request (`<upstream>__<tool>`). A parsed name rebuilds to itself.
pub fn tool_name(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = ExposedTool::parse(text) {
        assert_eq!(t.to_string(), text, "display differs from the input");
        assert_eq!(
            ExposedTool::expose(&t.upstream, &t.tool).as_deref(),
            Some(text),
            "expose differs from the input"
        );
    }
}

/// An agent's public key PEM, as it arrives inside an applied `Agent` resource.
pub fn public_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = parse_public_key_pem(text) {
        let _ = jwk_thumbprint(&key);
    }
}
