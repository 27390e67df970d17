#!/usr/bin/env python3
"""The counting set of tests/mutants.sh: the mutants of src/analyze in byte
and piece counting. Reads `cargo mutants --list --json` (argument 1), prints
the selected mutants' names, or with --diff a unified diff that "adds" their
lines, for `cargo mutants --in-diff` (cargo-mutants 27 lets the field
deletions of struct literals through every --re and --exclude-re, so names
cannot select them; lines can).

The rule (tests/MUTANTS.md):
- every mutant of the functions in WHOLE: they compute stream bytes, gap
  bytes, piece bytes, piece sets, piece counts, completion or rates;
- in the functions in MIXED, which mix counting with other bookkeeping
  (peer keys, anomalies, sources, ids), the mutants on source lines that
  name a counted quantity (WORDS), and the whole-body replacement of the
  two row builders;
- not: memory accounting (heap_bytes, buffered_bytes: bounds, not
  traffic), piece hash verification (PieceChecker: it decides verified or
  failed, a separate figure with its own tests), DHT, trackers, audit.
"""
import json
import re
import sys

d = json.load(open(sys.argv[1]))
WHOLE = {
 'session.rs': {'PeerSession::feed','PeerSession::feed_unkept','PeerSession::frame','PeerSession::set_mse_handshake',
                'State::block_progress','State::end_block','State::on_event','State::check_data'},
 'stream.rs': {'MseScan::take','MseScan::passed','mse_plaintext','StreamEnd::apply'},
 'udp.rs': {'on_utp_event'},
 'pieces.rs': {'piece_len'},
 'swarm.rs': {'PieceSet::set','PieceSet::clear','PieceSet::union','PieceSet::union_bitfield','PieceSet::point',
              'TorrentState::count','bitfield_top','completion','pieces_from_left','progress','Swarm::note_piece',
              'PeerState::add_rate','PeerState::flush_rate_with'},
}
MIXED = {'session.rs': {'State::on_message','PeerSession::row'}, 'stream.rs': {'mse_row'},
         'swarm.rs': {'Swarm::apply_one','Swarm::finish'}}
WORDS = re.compile(r'bytes|piece|n_msgs|estimate|count|rate|complet|left|uploaded|downloaded|enc_sent|enc_received|gap|payload|bitfield|bits|spare|n_pieces|want')
src={}
def line(f,n):
    if f not in src: src[f]=open(f).read().split('\n')
    return src[f][n-1]
sel=[]
for m in d:
    f=m['file'].split('/')[-1]
    fn=(m.get('function') or {}).get('function_name','')
    l=m['span']['start']['line']
    if fn in WHOLE.get(f,()):
        sel.append(m)
    elif fn in MIXED.get(f,()) and m['genre']!='FnValue' and WORDS.search(line(m['file'],l)):
        sel.append(m)
    elif fn in MIXED.get(f,()) and m['genre']=='FnValue' and fn in ('PeerSession::row','mse_row'):
        sel.append(m)
if "--diff" in sys.argv:
    lines = {}
    for m in sel:
        lines.setdefault(m["file"], set()).add(m["span"]["start"]["line"])
    for f, ls in sorted(lines.items()):
        text = open(f).read().split("\n")
        print(f"--- a/{f}\n+++ b/{f}")
        for n in sorted(ls):
            print(f"@@ -{n - 1},0 +{n},1 @@\n+{text[n - 1]}")
else:
    for m in sel:
        print(m["name"])
