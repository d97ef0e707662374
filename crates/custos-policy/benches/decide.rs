//! The cost of one policy decision at the scale issue 8 names: 500 upstream tools (50
//! upstreams × 10), 200 templates of 20 entries (globs, argument constraints, tiers), tier
//! rules and tainted tiers on every upstream. Agents do not enter the decision (a task's
//! template does), so their number (1000 in the target) changes nothing here.
//!
//! `cargo bench -p custos-policy --bench decide` prints, per case, p50/p99/max of single
//! decisions (each timed alone, after every slice it touches was compiled once), the cost of
//! the first decision per (template, tool) slice (compiling it), and the cost of deciding
//! whether 100 tools are listed. Knobs: `BENCH_N` (decisions per case, default 200000),
//! `BENCH_CASE` (run that case only, and nothing else: for instruction counts under
//! `valgrind --tool=callgrind`, where wall-clock noise does not reach).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use custos_core::resource::parse_documents;
use custos_core::{Resource, TemplateSpec, UpstreamSpec};
use custos_policy::{CallRequest, Compiled, PolicyView, Verdict};
use serde_json::{Value, json};

const UPSTREAMS: usize = 50;
const TOOLS: usize = 10;
const TEMPLATES: usize = 200;

fn registry() -> (BTreeMap<String, UpstreamSpec>, Vec<TemplateSpec>) {
    let mut yaml = String::new();
    for u in 0..UPSTREAMS {
        let tiers: Vec<String> = (0..TOOLS).map(|t| format!("t{t}: {}", 1 + t % 3)).collect();
        yaml.push_str(&format!(
            "kind: Upstream\nname: up{u}\ncommand: [x]\ntiers: {{ {} }}\ndefault_tier: 3\n\
             tier_rules:\n  - {{ tool: t1, args: {{ rows: {{ min: 1000 }} }}, tier: 3 }}\n  \
             - {{ tool: t2, args: {{ branch: [main, \"release*\"] }}, tier: 3 }}\n\
             untrusted: [t9]\ntainted_tiers: {{ t3: 3 }}\n---\n",
            tiers.join(", ")
        ));
    }
    for t in 0..TEMPLATES {
        let mut tools = Vec::new();
        for i in 0..20 {
            let u = (t * 7 + i) % UPSTREAMS;
            tools.push(match i % 4 {
                0 => format!("\"up{u}__*\""),
                1 => format!("{{ tool: up{u}__t3, args: {{ channel: [\"internal-*\", team] }} }}"),
                2 => format!(
                    "{{ tool: \"up{u}__t1\", args: {{ rows: {{ max: 100000 }} }}, tier: 2 }}"
                ),
                _ => format!("up{u}__t{}", i % TOOLS),
            });
        }
        yaml.push_str(&format!(
            "kind: Template\nname: tpl{t}\nttl: 30m\ntools:\n{}\n---\n",
            tools
                .iter()
                .map(|e| format!("  - {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    let mut upstreams = BTreeMap::new();
    let mut templates = Vec::new();
    for r in parse_documents(&yaml).expect("the benchmark registry parses") {
        match r {
            Resource::Upstream(u) => {
                upstreams.insert(u.name.clone(), u);
            }
            Resource::Template(t) => templates.push(t),
            _ => {}
        }
    }
    (upstreams, templates)
}

/// The calls of one case: (template index, tool, arguments).
fn calls(templates: &[TemplateSpec], case: &str) -> Vec<(usize, String, Value)> {
    let mut out = Vec::new();
    for (ti, t) in templates.iter().enumerate() {
        let u = (ti * 7) % UPSTREAMS;
        let c = match case {
            "plain" => (format!("up{u}__t0"), json!({"path": "/srv/a"})),
            "args" => (
                format!("up{}__t3", (ti * 7 + 1) % UPSTREAMS),
                json!({"channel": "internal-news"}),
            ),
            "tier-rule" => (format!("up{u}__t1"), json!({"rows": 5000, "q": "select"})),
            _ => (format!("up{u}__t5"), json!({})),
        };
        let _ = t;
        out.push((ti, c.0, c.1));
    }
    out
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let (upstreams, templates) = registry();
    let policies: usize = templates.iter().map(|t| t.tools.len()).sum::<usize>()
        + upstreams
            .values()
            .map(|u| u.tiers.len() + u.tier_rules.len() + u.tainted_tiers.len() + 1)
            .sum::<usize>();
    println!(
        "registry: {} upstreams, {} tools, {} templates, {} template entries and tier statements",
        upstreams.len(),
        UPSTREAMS * TOOLS,
        templates.len(),
        policies
    );
    let compiled = Compiled::default();
    let only = std::env::var("BENCH_CASE").ok();
    for case in ["plain", "args", "tier-rule", "untrusted-tainted"] {
        if only.as_deref().is_some_and(|o| o != case) {
            continue;
        }
        let tainted = case == "untrusted-tainted";
        let cs = calls(&templates, case);
        let view = |ti: usize| PolicyView {
            template: Some(&templates[ti]),
            upstreams: &upstreams,
            version: 1,
            compiled: &compiled,
            tainted,
        };
        // First decision per slice: compiles it.
        let mut cold = Vec::with_capacity(cs.len());
        for (ti, tool, args) in &cs {
            let started = Instant::now();
            black_box(custos_policy::decide(
                view(*ti),
                CallRequest::new("task_b", tool, args.clone()),
            ));
            cold.push(started.elapsed().as_nanos());
        }
        cold.sort_unstable();
        let mut times = Vec::with_capacity(n);
        let mut verdicts = BTreeMap::new();
        for i in 0..n {
            let (ti, tool, args) = &cs[i % cs.len()];
            let request = CallRequest::new("task_b", tool, args.clone());
            let started = Instant::now();
            let v = custos_policy::decide(view(*ti), request);
            times.push(started.elapsed().as_nanos());
            let k = match &v {
                Verdict::Permit(p) => format!("permit tier {}", p.tier()),
                Verdict::Hold(h) => format!("hold tier {}", h.tier()),
                Verdict::Deny(r) => format!("deny {}", r.reason),
            };
            *verdicts.entry(k).or_insert(0usize) += 1;
            black_box(v);
        }
        times.sort_unstable();
        println!(
            "decide/{case:<18} p50 {:>6.1} µs  p99 {:>6.1} µs  max {:>7.1} µs  | first per slice p50 {:>6.1} µs p99 {:>6.1} µs | {verdicts:?}",
            percentile(&times, 0.50) as f64 / 1000.0,
            percentile(&times, 0.99) as f64 / 1000.0,
            *times.last().unwrap_or(&0) as f64 / 1000.0,
            percentile(&cold, 0.50) as f64 / 1000.0,
            percentile(&cold, 0.99) as f64 / 1000.0,
        );
    }
    if only.is_some() {
        return;
    }
    // tools/list: whether each of 100 tools is listed to a task of one template.
    let t = &templates[0];
    let candidates: Vec<(String, &UpstreamSpec, String)> = (0..100)
        .map(|i| {
            let u = format!("up{}", i % UPSTREAMS);
            let tool = format!("t{}", i % TOOLS);
            (format!("{u}__{tool}"), &upstreams[&u], tool)
        })
        .collect();
    let mut times = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let started = Instant::now();
        let listed = candidates
            .iter()
            .filter(|(exposed, up, tool)| custos_policy::lists(t, up, exposed, tool))
            .count();
        times.push(started.elapsed().as_nanos());
        black_box(listed);
    }
    times.sort_unstable();
    println!(
        "lists/100-tools        p50 {:>6.1} µs  p99 {:>6.1} µs",
        percentile(&times, 0.50) as f64 / 1000.0,
        percentile(&times, 0.99) as f64 / 1000.0,
    );
    // Pinning digests each listed definition: 100 definitions shaped like the reference
    // servers' (a description, a schema of three properties, annotations).
    let definitions: Vec<Value> = (0..100)
        .map(|i| {
            json!({
                "name": format!("tool_{i}"),
                "description": "Read the complete contents of a file from the file system. Handles various text encodings and provides detailed error messages if the file cannot be read.",
                "inputSchema": {"type": "object", "properties": {
                    "path": {"type": "string"}, "head": {"type": "number", "description": "first N lines"},
                    "tail": {"type": "number", "description": "last N lines"}}, "required": ["path"]},
                "annotations": {"readOnlyHint": true, "destructiveHint": false},
            })
        })
        .collect();
    let mut times = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        let started = Instant::now();
        for d in &definitions {
            black_box(custos_crypto::tool_definition_digest(d));
        }
        times.push(started.elapsed().as_nanos());
    }
    times.sort_unstable();
    println!(
        "pin-digest/100-tools   p50 {:>6.1} µs  p99 {:>6.1} µs",
        percentile(&times, 0.50) as f64 / 1000.0,
        percentile(&times, 0.99) as f64 / 1000.0,
    );
}
