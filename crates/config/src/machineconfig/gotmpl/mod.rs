//! The subset of Go's text/template (with the sprig functions talhelper's users
//! reach for) that talhelper evaluates: image URL templates
//! (`th:pkg/talos/schematic.go@v3.1.16`), templated `nodeLabels`/`nodeAnnotations`
//! (`th:pkg/templating/template.go`) and templated patches (`th:pkg/patcher`).
//!
//! Supported: text with `{{ }}` actions and `{{-`/`-}}` trimming, comments, field
//! chains, `$` variables (`$x :=`, `range $i, $v :=`), `if`/`else if`/`else`,
//! `range`, `with`, `end`, pipes and parentheses; functions `and or not eq ne lt le
//! gt ge len index print printf`, sprig `contains hasPrefix hasSuffix trim trimPrefix
//! trimSuffix replace lower upper default quote join split empty`. Anything else is
//! an error naming it, never passed through.

use serde_yaml_ng::Value;

mod funcs;

/// How a field name in a chain (`.MachineConfig.MachineInstall`) finds its value.
pub enum Names {
    /// The data's keys are the Go names themselves (URL template data).
    Plain,
    /// The data is a Talos v1alpha1 document: Go field names are mapped to YAML keys.
    GoConfig,
}

/// Renders `text` against `data`.
pub fn render(text: &str, data: &Value, names: &Names) -> Result<String, String> {
    let toks = split(text)?;
    check_depth(&toks)?;
    let mut pos = 0;
    let (nodes, stop) = parse_list(&toks, &mut pos)?;
    if let Some(s) = stop {
        return Err(format!("unexpected {{{{{s}}}}}"));
    }
    let mut out = String::new();
    let mut ev = Eval {
        names,
        vars: vec![("$".into(), data.clone())],
    };
    ev.run(&nodes, data, &mut out)?;
    Ok(out)
}

/// Whether talhelper treats a string as a template.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("}}")
}

/// Nesting limit for blocks and parentheses: the parser recurses, and a hostile
/// template must not exhaust the stack.
const MAX_DEPTH: usize = 64;

fn check_depth(toks: &[Piece]) -> Result<(), String> {
    let mut blocks = 0usize;
    for t in toks {
        let Piece::Action(a) = t else { continue };
        match a.split_whitespace().next().unwrap_or("") {
            "if" | "range" | "with" => blocks += 1,
            "end" => blocks = blocks.saturating_sub(1),
            _ => {}
        }
        let mut parens = 0usize;
        let mut max = 0usize;
        for c in a.chars() {
            match c {
                '(' => {
                    parens += 1;
                    max = max.max(parens);
                }
                ')' => parens = parens.saturating_sub(1),
                _ => {}
            }
        }
        if blocks > MAX_DEPTH || max > MAX_DEPTH {
            return Err(format!("nests deeper than {MAX_DEPTH} levels"));
        }
    }
    Ok(())
}

enum Piece {
    Text(String),
    Action(String),
}

/// Cuts text into literal pieces and actions, applying the trim markers.
fn split(text: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        let mut lit = rest[..i].to_string();
        let after = &rest[i + 2..];
        let (trim_left, after) = match after.strip_prefix("- ") {
            Some(a) => (true, a),
            None => (false, after),
        };
        if trim_left {
            lit = lit.trim_end().to_string();
        }
        out.push(Piece::Text(lit));
        let end = after
            .find("}}")
            .ok_or_else(|| "unclosed action: `{{` without `}}`".to_string())?;
        let mut inner = &after[..end];
        let mut next = &after[end + 2..];
        if let Some(x) = inner.strip_suffix(" -") {
            inner = x;
            next = next.trim_start();
        }
        let inner = inner.trim();
        if !(inner.starts_with("/*") && inner.ends_with("*/")) {
            out.push(Piece::Action(inner.to_string()));
        }
        rest = next;
    }
    out.push(Piece::Text(rest.to_string()));
    Ok(out)
}

#[derive(Debug, Clone)]
enum Arg {
    Dot(Vec<String>),
    Var(String, Vec<String>),
    Lit(Value),
    Func(String),
    Sub(Pipe),
}

#[derive(Debug, Clone, Default)]
struct Pipe {
    decl: Vec<String>,
    cmds: Vec<Vec<Arg>>,
}

enum Node {
    Text(String),
    Out(Pipe),
    If(Vec<(Pipe, Vec<Node>)>, Vec<Node>),
    Range(Pipe, Vec<Node>, Vec<Node>),
    With(Pipe, Vec<Node>, Vec<Node>),
}

/// Parses until `end`/`else`; returns the nodes and the stopping keyword's action.
fn parse_list(toks: &[Piece], pos: &mut usize) -> Result<(Vec<Node>, Option<String>), String> {
    let mut nodes = Vec::new();
    while *pos < toks.len() {
        let t = &toks[*pos];
        *pos += 1;
        match t {
            Piece::Text(s) => nodes.push(Node::Text(s.clone())),
            Piece::Action(a) => {
                let word = a.split_whitespace().next().unwrap_or("");
                match word {
                    "end" | "else" => return Ok((nodes, Some(a.clone()))),
                    "if" | "range" | "with" => {
                        let pipe = parse_pipe(&a[word.len()..])?;
                        nodes.push(parse_block(word, pipe, toks, pos)?);
                    }
                    "template" | "define" | "block" | "break" | "continue" => {
                        return Err(format!("`{word}` is not supported in templates here"))
                    }
                    _ => nodes.push(Node::Out(parse_pipe(a)?)),
                }
            }
        }
    }
    Ok((nodes, None))
}

fn parse_block(word: &str, pipe: Pipe, toks: &[Piece], pos: &mut usize) -> Result<Node, String> {
    let (body, stop) = parse_list(toks, pos)?;
    let stop = stop.ok_or_else(|| format!("`{word}` without `end`"))?;
    let mut branches = vec![(pipe, body)];
    let mut else_body = Vec::new();
    let mut stop = stop;
    loop {
        if stop == "end" {
            break;
        }
        let rest = stop.strip_prefix("else").unwrap_or("").trim();
        if let Some(cond) = rest.strip_prefix("if ").filter(|_| word == "if") {
            let (b, s) = parse_list(toks, pos)?;
            branches.push((parse_pipe(cond)?, b));
            stop = s.ok_or("`else if` without `end`")?;
            continue;
        }
        if !rest.is_empty() {
            return Err(format!("`else {rest}` is not supported"));
        }
        let (b, s) = parse_list(toks, pos)?;
        else_body = b;
        if s.as_deref() != Some("end") {
            return Err(format!("`{word} … else` without `end`"));
        }
        break;
    }
    Ok(match word {
        "if" => Node::If(branches, else_body),
        "range" => {
            let (p, b) = branches.remove(0);
            Node::Range(p, b, else_body)
        }
        _ => {
            let (p, b) = branches.remove(0);
            Node::With(p, b, else_body)
        }
    })
}

fn lex(s: &str) -> Result<Vec<String>, String> {
    let c: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if "|(),".contains(ch) {
            out.push(ch.to_string());
            i += 1;
        } else if ch == ':' && c.get(i + 1) == Some(&'=') {
            out.push(":=".into());
            i += 2;
        } else if ch == '"' || ch == '`' {
            let mut j = i + 1;
            while j < c.len() && c[j] != ch {
                if ch == '"' && c[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            if j >= c.len() {
                return Err("unterminated string".into());
            }
            out.push(c[i..=j].iter().collect());
            i = j + 1;
        } else {
            let mut j = i;
            while j < c.len() && !c[j].is_whitespace() && !"|(),\"`".contains(c[j]) {
                if c[j] == ':' && c.get(j + 1) == Some(&'=') {
                    break;
                }
                j += 1;
            }
            out.push(c[i..j].iter().collect());
            i = j;
        }
    }
    Ok(out)
}

fn parse_pipe(s: &str) -> Result<Pipe, String> {
    let toks = lex(s)?;
    let mut pos = 0;
    let p = pipe_from(&toks, &mut pos)?;
    if pos < toks.len() {
        return Err(format!("unexpected `{}`", toks[pos]));
    }
    Ok(p)
}

fn pipe_from(t: &[String], pos: &mut usize) -> Result<Pipe, String> {
    let mut p = Pipe::default();
    // `$x :=` or `$i, $v :=`
    let mut look = *pos;
    let mut decl = Vec::new();
    while look < t.len() && t[look].starts_with('$') {
        decl.push(t[look].clone());
        look += 1;
        if t.get(look).map(String::as_str) == Some(",") {
            look += 1;
        } else {
            break;
        }
    }
    if !decl.is_empty() && t.get(look).map(String::as_str) == Some(":=") {
        p.decl = decl;
        *pos = look + 1;
    }
    let mut cmd = Vec::new();
    while *pos < t.len() {
        let tok = t[*pos].as_str();
        match tok {
            ")" => break,
            "|" => {
                *pos += 1;
                p.cmds.push(std::mem::take(&mut cmd));
            }
            "(" => {
                *pos += 1;
                let sub = pipe_from(t, pos)?;
                if t.get(*pos).map(String::as_str) != Some(")") {
                    return Err("unclosed `(`".into());
                }
                *pos += 1;
                cmd.push(Arg::Sub(sub));
            }
            _ => {
                cmd.push(arg(tok)?);
                *pos += 1;
            }
        }
    }
    if !cmd.is_empty() {
        p.cmds.push(cmd);
    }
    if p.cmds.is_empty() || p.cmds.iter().any(Vec::is_empty) {
        return Err("empty command in pipeline".into());
    }
    Ok(p)
}

fn fields(s: &str) -> Vec<String> {
    s.split('.')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn arg(tok: &str) -> Result<Arg, String> {
    Ok(if tok.starts_with('.') {
        Arg::Dot(fields(tok))
    } else if let Some(v) = tok.strip_prefix('$') {
        let (name, rest) = v.split_once('.').unwrap_or((v, ""));
        Arg::Var(format!("${name}"), fields(rest))
    } else if tok.starts_with('"') {
        Arg::Lit(Value::String(
            serde_json::from_str::<String>(tok).map_err(|e| format!("bad string {tok}: {e}"))?,
        ))
    } else if let Some(raw) = tok.strip_prefix('`') {
        Arg::Lit(Value::String(raw.trim_end_matches('`').to_string()))
    } else if tok == "true" || tok == "false" {
        Arg::Lit(Value::Bool(tok == "true"))
    } else if tok == "nil" {
        Arg::Lit(Value::Null)
    } else if let Ok(n) = tok.parse::<i64>() {
        Arg::Lit(Value::Number(n.into()))
    } else if tok.chars().all(|c| c.is_alphanumeric() || c == '_') {
        Arg::Func(tok.to_string())
    } else {
        return Err(format!("cannot read `{tok}`"));
    })
}

/// Go field name → YAML key for the v1alpha1 config (`types/v1alpha1/v1alpha1_types.go`
/// struct tags, the fields templates in the wild reach).
const GO_NAMES: &[(&str, &str)] = &[
    ("MachineConfig", "machine"),
    ("ClusterConfig", "cluster"),
    ("ConfigVersion", "version"),
    ("ConfigDebug", "debug"),
    ("ConfigPersist", "persist"),
    ("MachineType", "type"),
    ("MachineToken", "token"),
    ("MachineCertSANs", "certSANs"),
    ("MachineInstall", "install"),
    ("InstallImage", "image"),
    ("InstallDisk", "disk"),
    ("InstallExtraKernelArgs", "extraKernelArgs"),
    ("InstallWipe", "wipe"),
    ("MachineNetwork", "network"),
    ("NetworkHostname", "hostname"),
    ("NameServers", "nameservers"),
    ("MachineKubelet", "kubelet"),
    ("KubeletImage", "image"),
    ("MachineNodeLabels", "nodeLabels"),
    ("MachineNodeAnnotations", "nodeAnnotations"),
    ("MachineNodeTaints", "nodeTaints"),
    ("MachineSysctls", "sysctls"),
    ("MachineFeatures", "features"),
    ("ClusterName", "clusterName"),
    ("ClusterID", "id"),
    ("ClusterNetwork", "network"),
    ("ServiceSubnet", "serviceSubnets"),
    ("PodSubnet", "podSubnets"),
    ("DNSDomain", "dnsDomain"),
    ("CNI", "cni"),
    ("CNIName", "name"),
    ("ControlPlane", "controlPlane"),
    ("Endpoint", "endpoint"),
    ("LocalAPIServerPort", "localAPIServerPort"),
    ("APIServerConfig", "apiServer"),
    ("CertSANs", "certSANs"),
    ("ExtraArgsConfig", "extraArgs"),
    ("ContainerImage", "image"),
    ("EtcdConfig", "etcd"),
    (
        "AllowSchedulingOnControlPlanes",
        "allowSchedulingOnControlPlanes",
    ),
];

struct Eval<'a> {
    names: &'a Names,
    vars: Vec<(String, Value)>,
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().map(|f| f != 0.0).unwrap_or(true),
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(t) => truthy(&t.value),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(s) => format!("[{}]", s.iter().map(text).collect::<Vec<_>>().join(" ")),
        Value::Mapping(m) => format!(
            "map[{}]",
            m.iter()
                .map(|(k, v)| format!("{}:{}", text(k), text(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Value::Tagged(t) => text(&t.value),
    }
}

fn str_arg(v: &Value) -> String {
    text(v)
}

impl Eval<'_> {
    fn run(&mut self, nodes: &[Node], dot: &Value, out: &mut String) -> Result<(), String> {
        let depth = self.vars.len();
        for n in nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Out(p) => {
                    let v = self.pipe(p, dot)?;
                    if p.decl.is_empty() {
                        out.push_str(&text(&v));
                    }
                }
                Node::If(branches, els) => {
                    let mut done = false;
                    for (p, body) in branches {
                        if truthy(&self.pipe(p, dot)?) {
                            self.run(body, dot, out)?;
                            done = true;
                            break;
                        }
                    }
                    if !done {
                        self.run(els, dot, out)?;
                    }
                }
                Node::With(p, body, els) => {
                    let v = self.pipe(p, dot)?;
                    if truthy(&v) {
                        self.run(body, &v, out)?;
                    } else {
                        self.run(els, dot, out)?;
                    }
                }
                Node::Range(p, body, els) => {
                    let mut decl = p.clone();
                    decl.decl.clear();
                    let v = self.pipe(&decl, dot)?;
                    let items: Vec<(Value, Value)> = match &v {
                        Value::Sequence(s) => s
                            .iter()
                            .enumerate()
                            .map(|(i, x)| (Value::Number((i as u64).into()), x.clone()))
                            .collect(),
                        Value::Mapping(m) => {
                            let mut e: Vec<_> =
                                m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                            e.sort_by_key(|(k, _)| text(k));
                            e
                        }
                        Value::Null => Vec::new(),
                        other => return Err(format!("range over {}", text(other))),
                    };
                    if items.is_empty() {
                        self.run(els, dot, out)?;
                    }
                    for (k, item) in items {
                        let mark = self.vars.len();
                        match p.decl.as_slice() {
                            [v] => self.vars.push((v.clone(), item.clone())),
                            [i, v] => {
                                self.vars.push((i.clone(), k));
                                self.vars.push((v.clone(), item.clone()));
                            }
                            _ => {}
                        }
                        self.run(body, &item, out)?;
                        self.vars.truncate(mark);
                    }
                }
            }
        }
        self.vars.truncate(depth);
        Ok(())
    }

    fn pipe(&mut self, p: &Pipe, dot: &Value) -> Result<Value, String> {
        let mut prev: Option<Value> = None;
        for cmd in &p.cmds {
            prev = Some(self.cmd(cmd, dot, prev)?);
        }
        let v = prev.unwrap_or(Value::Null);
        if let Some(name) = p.decl.first() {
            self.vars.push((name.clone(), v.clone()));
        }
        Ok(v)
    }

    fn lookup(&self, base: &Value, chain: &[String]) -> Result<Value, String> {
        let mut cur = base.clone();
        for f in chain {
            let key = match self.names {
                Names::Plain => f.as_str(),
                Names::GoConfig => GO_NAMES
                    .iter()
                    .find(|(g, _)| g == f)
                    .map(|(_, y)| *y)
                    .ok_or_else(|| {
                        format!("field `.{f}` is not one this tool can map onto the machine config")
                    })?,
            };
            cur = match &cur {
                // Plain data stands for a Go struct: an unknown field is an error.
                Value::Mapping(m) if matches!(self.names, Names::Plain) => m
                    .get(key)
                    .cloned()
                    .ok_or_else(|| format!("can't evaluate field {f}"))?,
                Value::Mapping(m) => m.get(key).cloned().unwrap_or(Value::Null),
                // A Go zero struct: its fields are zero too.
                Value::Null => Value::Null,
                other => return Err(format!("can't evaluate field {f} in {}", text(other))),
            };
        }
        Ok(cur)
    }

    fn value(&mut self, a: &Arg, dot: &Value) -> Result<Value, String> {
        match a {
            Arg::Dot(chain) => self.lookup(dot, chain),
            Arg::Var(name, chain) => {
                let v = self
                    .vars
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| format!("undefined variable {name}"))?;
                self.lookup(&v, chain)
            }
            Arg::Lit(v) => Ok(v.clone()),
            Arg::Sub(p) => self.pipe(p, dot),
            Arg::Func(f) => self.call(f, &[], dot),
        }
    }

    fn cmd(&mut self, cmd: &[Arg], dot: &Value, piped: Option<Value>) -> Result<Value, String> {
        if let Arg::Func(f) = &cmd[0] {
            // `and`/`or` short-circuit like Go's.
            if f == "and" || f == "or" {
                let mut last = Value::Null;
                let n = cmd.len() - 1 + usize::from(piped.is_some());
                if n == 0 {
                    return Err(format!("{f}: no arguments"));
                }
                for a in &cmd[1..] {
                    last = self.value(a, dot)?;
                    if truthy(&last) == (f == "or") {
                        return Ok(last);
                    }
                }
                if let Some(p) = piped {
                    last = p;
                }
                return Ok(last);
            }
            let mut args = Vec::new();
            for a in &cmd[1..] {
                args.push(self.value(a, dot)?);
            }
            args.extend(piped);
            return self.call(f, &args, dot);
        }
        if cmd.len() > 1 || piped.is_some() {
            return Err("a value cannot take arguments".into());
        }
        self.value(&cmd[0], dot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> Value {
        serde_yaml_ng::from_str(s).unwrap()
    }

    #[test]
    fn talhelper_guide_templates_render() {
        // talhelper docs/docs/guides.md@v3.1.16 and patcher testdata templating*.
        let cfg = y("machine:\n  type: worker\n  install:\n    image: factory.talos.dev/metal-installer-secureboot/abc:v1.13.0\ncluster:\n  network:\n    serviceSubnets: [10.96.0.0/12, fd00::/112]\n");
        let g = |t: &str| render(t, &cfg, &Names::GoConfig).unwrap();
        assert_eq!(
            g("{{ .MachineConfig.MachineInstall.InstallImage }}"),
            "factory.talos.dev/metal-installer-secureboot/abc:v1.13.0"
        );
        assert_eq!(
            g("{{ .MachineConfig.MachineInstall.InstallImage | contains \"installer-secureboot\" }}"),
            "true"
        );
        assert_eq!(
            g("{{- if ne .MachineConfig.MachineType \"worker\" }}cp{{- else }}w{{ end }}"),
            "w"
        );
        assert_eq!(
            g("{{- range $subnet := .ClusterConfig.ClusterNetwork.ServiceSubnet }}\n- {{ $subnet }}{{ end }}"),
            "\n- 10.96.0.0/12\n- fd00::/112"
        );
        assert!(render("{{ .MachineConfig.Bogus }}", &cfg, &Names::GoConfig)
            .unwrap_err()
            .contains("Bogus"));
        assert!(render("{{ tpl . }}", &cfg, &Names::GoConfig)
            .unwrap_err()
            .contains("tpl"));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let deep = format!("{{{{ {}.X{} }}}}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(render(&deep, &Value::Null, &Names::Plain)
            .unwrap_err()
            .contains("deeper"));
        let blocks = format!(
            "{}{}",
            "{{ if true }}".repeat(10_000),
            "{{ end }}".repeat(10_000)
        );
        assert!(render(&blocks, &Value::Null, &Names::Plain)
            .unwrap_err()
            .contains("deeper"));
    }

    #[test]
    fn talhelper_installer_template_vector() {
        // th:pkg/talos/schematic_test.go@v3.1.16, the custom-template case.
        let d = y("RegistryURL: '     myregistry.com'\nVersion: 1.5.4\n");
        let d = match d {
            Value::Mapping(mut m) => {
                m.insert(y("Version"), Value::String("1.5.4".into()));
                Value::Mapping(m)
            }
            v => v,
        };
        assert_eq!(
            render(
                "{{ trim .RegistryURL }}/{{ or (hasPrefix \"v\" .Version) (print \"v\" .Version) }}",
                &d,
                &Names::Plain
            )
            .unwrap(),
            "myregistry.com/v1.5.4"
        );
    }
}
