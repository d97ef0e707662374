//! Arbitrary bytes, and arbitrary text, through every target: what CI runs without nightly.

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn jsonrpc_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        custos_fuzz::jsonrpc(&data);
    }

    #[test]
    fn jsonrpc_text(text in r#"\{("[a-z]{0,8}":("2\.0"|[0-9]{1,3}|"[a-z/]{0,12}"|\{\}|null),?){0,5}\}"#) {
        custos_fuzz::jsonrpc(text.as_bytes());
    }

    #[test]
    fn task_token_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        custos_fuzz::task_token(&data);
    }

    #[test]
    fn task_token_claims(iat in any::<i64>(), nbf in any::<i64>(), exp in any::<i64>(), aud in "[a-z:/.0-9]{0,30}") {
        let claims = format!(
            r#"{{"iss":"{}","aud":"{aud}","sub":"alice","act":{{"sub":"agent-a"}},"task_id":"task_1","template":"docs","iat":{iat},"nbf":{nbf},"exp":{exp},"jti":"tok_1"}}"#,
            custos_fuzz::ISSUER
        );
        custos_fuzz::task_token(claims.as_bytes());
    }

    #[test]
    fn assertion_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        custos_fuzz::assertion(&data);
    }

    #[test]
    fn assertion_text(text in "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,40}") {
        custos_fuzz::assertion(text.as_bytes());
    }

    #[test]
    fn yaml_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        custos_fuzz::yaml(&data);
    }

    #[test]
    fn yaml_text(text in "(kind: (Upstream|Template|Agent)\n|name: [a-z-]{0,12}\n|ttl: [0-9]{0,4}[smhd]\n|tools: \\[[a-z_*]{0,10}\\]\n|command: \\[[a-z]{0,5}\\]\n|url: http://[a-z]{1,5}\n|---\n){0,8}") {
        custos_fuzz::yaml(text.as_bytes());
    }

    #[test]
    fn duration_bytes(data in prop::collection::vec(any::<u8>(), 0..64)) {
        custos_fuzz::duration(&data);
    }

    #[test]
    fn duration_text(text in "([0-9]{0,21}(ms|s|m|h|d|x)?){0,4}") {
        custos_fuzz::duration(text.as_bytes());
    }

    #[test]
    fn tool_name_text(text in "[a-z_]{0,10}(__)?[a-z_.-]{0,10}") {
        custos_fuzz::tool_name(text.as_bytes());
    }

    #[test]
    fn tool_name_bytes(data in prop::collection::vec(any::<u8>(), 0..96)) {
        custos_fuzz::tool_name(&data);
    }

    #[test]
    fn public_key_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        custos_fuzz::public_key(&data);
    }

    #[test]
    fn public_key_text(b64 in "[A-Za-z0-9+/=]{0,80}") {
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
        custos_fuzz::public_key(pem.as_bytes());
    }
}

proptest! {
    // Signed assertion claims with any times: `verify_assertion` once computed `exp - iat`
    // unchecked, which overflowed (a panic: overflow checks are on in every profile) for e.g.
    // iat = -1, exp = i64::MAX. See fuzz/crashes/assertion/.
    #[test]
    fn assertion_claims(iat in any::<i64>(), exp in any::<i64>()) {
        let claims = format!(
            r#"{{"iss":"agent-a","sub":"agent-a","aud":"{}","iat":{iat},"exp":{exp},"jti":"jti_1"}}"#,
            custos_fuzz::ISSUER
        );
        custos_fuzz::assertion(claims.as_bytes());
    }
}
