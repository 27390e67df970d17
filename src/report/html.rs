//! The page: sections, sortable and searchable tables, inline CSS and a few
//! lines of vanilla JavaScript. Nothing is loaded from anywhere.

use std::fmt::Write as _;

use super::svg::esc;

/// A table cell: shown text and the value it sorts by.
pub enum Cell {
    Num(f64, String),
    Text(String),
}

impl Cell {
    pub fn int(v: i64) -> Cell {
        Cell::Num(v as f64, super::svg::fmt_int(v))
    }
    pub fn opt_int(v: Option<i64>) -> Cell {
        match v {
            Some(v) => Cell::int(v),
            None => Cell::Num(f64::NEG_INFINITY, String::new()),
        }
    }
    pub fn bytes(v: i64) -> Cell {
        Cell::Num(v as f64, super::svg::fmt_bytes(v as f64))
    }
    pub fn text(s: impl Into<String>) -> Cell {
        Cell::Text(s.into())
    }
}

/// A sortable, searchable table.
pub struct Table {
    pub id: String,
    pub headers: Vec<(&'static str, &'static str)>, // (header, hover help)
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = write!(
            o,
            "<div class=\"tblwrap\"><label class=\"search\">Search <input type=\"search\" data-table=\"{id}\" placeholder=\"any text in a row\"></label> <span class=\"count\" id=\"{id}-count\">{n} rows</span><div class=\"scroll\"><table class=\"data sortable\" id=\"{id}\"><thead><tr>",
            id = esc(&self.id),
            n = self.rows.len()
        );
        for (i, (h, help)) in self.headers.iter().enumerate() {
            let numeric = self
                .rows
                .first()
                .map(|r| matches!(r.get(i), Some(Cell::Num(..))))
                .unwrap_or(false);
            let _ = write!(
                o,
                "<th scope=\"col\" data-type=\"{}\" title=\"{}\" tabindex=\"0\" aria-sort=\"none\">{}</th>",
                if numeric { "num" } else { "str" },
                esc(help),
                esc(h)
            );
        }
        o.push_str("</tr></thead><tbody>");
        for r in &self.rows {
            o.push_str("<tr>");
            for c in r {
                match c {
                    Cell::Num(v, s) => {
                        let v = if v.is_finite() { format!("{v}") } else { "-1e308".into() };
                        let _ = write!(o, "<td class=\"n\" data-v=\"{v}\">{}</td>", esc(s));
                    }
                    Cell::Text(s) => {
                        let _ = write!(o, "<td>{}</td>", esc(s));
                    }
                }
            }
            o.push_str("</tr>");
        }
        o.push_str("</tbody></table></div></div>");
        o
    }
}

pub const CSS: &str = r#"
:root{--fg:#1d2329;--muted:#5b6670;--line:#d5dbe0;--bg:#fff;--accent:#2f5f8f}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:#f4f6f8}
header{background:#1f3347;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:24px}
header p{margin:4px 0 0;color:#cbd6e0}
nav{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);padding:6px 28px;font-size:14px}
nav a{margin-right:16px;color:var(--accent);text-decoration:none}
main{max-width:1180px;margin:0 auto;padding:10px 24px 40px}
section{background:var(--bg);border:1px solid var(--line);border-radius:6px;margin:18px 0;padding:14px 20px}
h2{margin:4px 0 8px;font-size:20px}
h3{margin:16px 0 6px;font-size:16px}
p.note{color:var(--muted);margin:4px 0 10px;font-size:14px}
p.empty{color:var(--muted);font-style:italic}
.kpis{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 10px}
.kpi{border:1px solid var(--line);border-radius:5px;padding:6px 12px;min-width:130px}
.kpi b{display:block;font-size:20px}
.kpi span{color:var(--muted);font-size:13px}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.row figure{max-width:520px}
figure{margin:8px 0 14px}
figcaption{font-size:14px;color:var(--muted);margin-bottom:4px}
svg.chart{max-width:100%;height:auto;font-family:inherit}
svg .tick{font-size:12px;fill:#333}
svg .tick.small{font-size:9px}
svg .tick.flag{fill:#b51f1f;font-weight:600}
svg .value{font-size:12px;fill:#333}
svg .axtitle{font-size:13px;fill:#333}
svg .legend{font-size:12px;fill:#222}
svg .axis{stroke:#555;stroke-width:1}
svg .grid{stroke:#e3e7ea;stroke-width:1}
svg .grat{stroke:#d6e2ea;stroke-width:0.3}
ul.notes{margin:6px 0;padding-left:20px;color:var(--muted);font-size:14px}
.tblwrap{margin:6px 0 16px}
.search input{font:inherit;padding:3px 8px;border:1px solid #aab4bd;border-radius:4px;width:260px}
.count{color:var(--muted);font-size:13px;margin-left:8px}
.scroll{max-height:460px;overflow:auto;border:1px solid var(--line);margin-top:6px}
table.data{border-collapse:collapse;font-size:13px;width:100%}
table.data th{position:sticky;top:0;background:#e9eef2;text-align:left;padding:5px 8px;cursor:pointer;white-space:nowrap;user-select:none}
table.data th[aria-sort=ascending]::after{content:" ▲"}
table.data th[aria-sort=descending]::after{content:" ▼"}
table.data td{padding:3px 8px;border-top:1px solid #edf0f2;white-space:nowrap;font-variant-numeric:tabular-nums}
table.data td.n{text-align:right}
table.data tr:hover td{background:#f5f9fc}
code{font-size:13px}
footer{color:var(--muted);font-size:13px;text-align:center;padding:10px}
"#;

pub const JS: &str = r#"
(function(){
  function val(td, num){ if(!td) return num ? -Infinity : ''; if(num){ var v=parseFloat(td.getAttribute('data-v')); return isNaN(v)?-Infinity:v; } return td.textContent.toLowerCase(); }
  document.querySelectorAll('table.sortable').forEach(function(t){
    var ths=t.tHead.rows[0].cells;
    Array.prototype.forEach.call(ths,function(th,i){
      function sort(){
        var num=th.getAttribute('data-type')==='num';
        var dir=th.getAttribute('aria-sort')==='descending'?'ascending':'descending';
        if(!num && th.getAttribute('aria-sort')==='none') dir='ascending';
        Array.prototype.forEach.call(ths,function(o){o.setAttribute('aria-sort','none');});
        th.setAttribute('aria-sort',dir);
        var body=t.tBodies[0], rows=Array.prototype.slice.call(body.rows), s=dir==='ascending'?1:-1;
        rows.sort(function(a,b){var x=val(a.cells[i],num),y=val(b.cells[i],num);return x<y?-s:x>y?s:0;});
        rows.forEach(function(r){body.appendChild(r);});
      }
      th.addEventListener('click',sort);
      th.addEventListener('keydown',function(e){if(e.key==='Enter'||e.key===' '){e.preventDefault();sort();}});
    });
  });
  document.querySelectorAll('input[data-table]').forEach(function(inp){
    var t=document.getElementById(inp.getAttribute('data-table'));
    var cnt=document.getElementById(inp.getAttribute('data-table')+'-count');
    inp.addEventListener('input',function(){
      var q=inp.value.trim().toLowerCase(), shown=0, rows=t.tBodies[0].rows;
      for(var k=0;k<rows.length;k++){var ok=!q||rows[k].textContent.toLowerCase().indexOf(q)>=0;rows[k].style.display=ok?'':'none';if(ok)shown++;}
      cnt.textContent=q?(shown+' of '+rows.length+' rows'):(rows.length+' rows');
    });
  });
})();
"#;

/// The whole page.
pub fn page(title: &str, subtitle: &str, nav: &[(&str, &str)], body: &str, footer: &str) -> String {
    let mut o = String::with_capacity(body.len() + 8192);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\
<title>{}</title><style>{CSS}</style></head><body><header><h1>{}</h1><p>{}</p></header><nav>",
        esc(title),
        esc(title),
        esc(subtitle)
    );
    for (id, name) in nav {
        let _ = write!(o, "<a href=\"#{id}\">{}</a>", esc(name));
    }
    let _ = writeln!(
        o,
        "</nav><main>{body}</main><footer>{}</footer><script>{JS}</script></body></html>",
        esc(footer)
    );
    o
}
