//! Authentication and authorization at the edges: operator roles, the token exchange, and
//! task tokens at the gateway. Every refusal is a 401 without detail and an audit record.
