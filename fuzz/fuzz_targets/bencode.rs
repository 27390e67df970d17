//! The bencode reader: parse, then walk everything it accepted.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap_wire::bencode::{parse, BencodeLimits, Value};

fn walk(v: Value<'_>, budget: &mut u32) {
    if *budget == 0 {
        return;
    }
    *budget -= 1;
    match v {
        Value::List(l) => l.iter().for_each(|x| walk(x, budget)),
        Value::Dict(d) => d.iter().for_each(|(_, x)| walk(x, budget)),
        Value::Int(_) | Value::Bytes(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = BencodeLimits {
        max_depth: 64,
        max_items: 1 << 16,
    };
    if let Ok((v, used)) = parse(data, &limits) {
        assert!(used <= data.len());
        let mut budget = 100_000;
        walk(v, &mut budget);
    }
});
