//! The `splitvm test` manifest (TOML, docs/ci-runner.md): parsed, then every
//! case checked before anything runs; an error names the file, the line and
//! the key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::cli::{parse_size, Transport};

/// One case, fully resolved (defaults applied, paths absolute).
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cpus: u32,
    pub memory: String,
    pub transport: Transport,
    /// `--irqchip` (the default, split, when absent).
    pub irqchip: Option<crate::irqchip::IrqChipMode>,
    /// Replaces splitvm's default command line.
    pub cmdline: Option<String>,
    /// Appended to the command line (default or `cmdline`).
    pub extra_cmdline: Option<String>,
    pub disks: Vec<String>,
    pub add: Vec<String>,
    pub command: Vec<String>,
    pub timeout: f64,
    pub expect: i32,
    /// Start from this snapshot directory instead of booting
    /// (docs/snapshot.md); the runner takes it first if it is missing.
    pub snapshot: Option<PathBuf>,
    /// Serve this case's VM API on this socket (`--api-socket`,
    /// docs/api.md); only in a case, never from `[defaults]`.
    pub api_socket: Option<PathBuf>,
}

/// A manifest error: `file:line: message`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {msg}")]
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub msg: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    defaults: Option<RawCase>,
    #[serde(default)]
    case: Vec<Spanned<RawCase>>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum RawCommand {
    #[default]
    None,
    /// A string runs as `sh -c STRING`.
    Shell(String),
    /// An array is the argv.
    Argv(Vec<String>),
}

#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Option<Spanned<String>>,
    kernel: Option<Spanned<String>>,
    initrd: Option<Spanned<String>>,
    cpus: Option<Spanned<i64>>,
    memory: Option<Spanned<String>>,
    transport: Option<Spanned<String>>,
    irqchip: Option<Spanned<String>>,
    cmdline: Option<Spanned<String>>,
    extra_cmdline: Option<Spanned<String>>,
    disks: Option<Spanned<Vec<String>>>,
    add: Option<Spanned<Vec<String>>>,
    command: Option<Spanned<RawCommand>>,
    timeout: Option<Spanned<Number>>,
    expect: Option<Spanned<i64>>,
    snapshot: Option<Spanned<String>>,
    api_socket: Option<Spanned<String>>,
}

/// The longest a case may run.
pub const MAX_TIMEOUT: f64 = 86_400.0;
/// A case's timeout when neither it nor `[defaults]` gives one.
pub const DEFAULT_TIMEOUT: f64 = 300.0;

struct Ctx<'a> {
    file: String,
    text: &'a str,
    dir: PathBuf,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }
    fn err<T>(&self, span: std::ops::Range<usize>, msg: String) -> Result<T, ManifestError> {
        Err(ManifestError {
            file: self.file.clone(),
            line: self.line(span.start),
            msg,
        })
    }

    /// `${VAR}` expanded from the environment, then made absolute against
    /// the manifest's directory.
    fn path(&self, key: &str, case: &str, v: &Spanned<String>) -> Result<PathBuf, ManifestError> {
        let s = self.expand(key, case, v)?;
        let p = PathBuf::from(&s);
        Ok(if p.is_absolute() { p } else { self.dir.join(p) })
    }

    fn expand(&self, key: &str, case: &str, v: &Spanned<String>) -> Result<String, ManifestError> {
        let mut out = String::new();
        let mut rest = v.get_ref().as_str();
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let Some(end) = rest[i..].find('}') else {
                return self.err(v.span(), format!("{case}key '{key}': unclosed '${{'"));
            };
            let var = &rest[i + 2..i + end];
            match std::env::var(var) {
                Ok(val) if !val.is_empty() => out.push_str(&val),
                _ => {
                    return self.err(
                        v.span(),
                        format!("{case}key '{key}': environment variable {var} is not set"),
                    )
                }
            }
            rest = &rest[i + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Read and check `path`.
pub fn load(path: &Path) -> Result<Vec<Case>, ManifestError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        file: file.clone(),
        line: 0,
        msg: format!("cannot read the manifest: {e}"),
    })?;
    let dir = path
        .parent()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    parse(&file, &text, &dir)
}

/// Parse and check a manifest's text; `dir` resolves relative paths.
pub fn parse(file: &str, text: &str, dir: &Path) -> Result<Vec<Case>, ManifestError> {
    let ctx = Ctx {
        file: file.to_string(),
        text,
        dir: dir.to_path_buf(),
    };
    let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError {
        file: file.to_string(),
        line: e.span().map(|s| ctx.line(s.start)).unwrap_or(0),
        msg: e.message().trim().to_string(),
    })?;
    if raw.case.is_empty() {
        return ctx.err(0..0, "no [[case]] in the manifest".into());
    }
    let defaults = raw.defaults.unwrap_or_default();
    let mut names = HashSet::new();
    let mut cases = Vec::new();
    for c in &raw.case {
        let span = c.span();
        let c = c.get_ref();
        let Some(name) = &c.name else {
            return ctx.err(span, "a [[case]] has no 'name'".into());
        };
        let n = name.get_ref();
        if n.is_empty()
            || !n
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
            || n.starts_with('.')
        {
            return ctx.err(
                name.span(),
                format!("key 'name': '{n}' must be letters, digits, '.', '_' or '-' (it names the case's output directory)"),
            );
        }
        if !names.insert(n.clone()) {
            return ctx.err(
                name.span(),
                format!("key 'name': duplicate case name '{n}'"),
            );
        }
        let who = format!("case '{n}': ");
        macro_rules! pick {
            ($f:ident) => {
                c.$f.as_ref().or(defaults.$f.as_ref())
            };
        }
        if let Some(s) = &defaults.api_socket {
            return ctx.err(
                s.span(),
                "key 'api_socket': one socket per case; give it in a case, or use `splitvm test --api-sockets DIR`".into(),
            );
        }
        let api_socket = c
            .api_socket
            .as_ref()
            .map(|s| ctx.path("api_socket", &who, s))
            .transpose()?;
        let snapshot = pick!(snapshot)
            .map(|s| ctx.path("snapshot", &who, s))
            .transpose()?;
        let kernel = match (pick!(kernel), &snapshot) {
            (Some(k), _) => ctx.path("kernel", &who, k)?,
            // Restore only: the snapshot must be there already.
            (None, Some(dir)) if dir.join(crate::snapshot::STATE_FILE).is_file() => PathBuf::new(),
            (None, Some(dir)) => {
                return ctx.err(
                    pick!(snapshot).expect("checked above").span(),
                    format!(
                    "{who}key 'snapshot': no snapshot in '{}', and no 'kernel' to take one with",
                    dir.display()
                ),
                )
            }
            (None, None) => {
                return ctx.err(
                    span,
                    format!("{who}no 'kernel' (in the case or in [defaults])"),
                )
            }
        };
        if pick!(kernel).is_some() && !kernel.is_file() {
            let k = pick!(kernel).expect("checked above");
            return ctx.err(
                k.span(),
                format!("{who}key 'kernel': no such file '{}'", kernel.display()),
            );
        }
        let initrd = match pick!(initrd) {
            Some(i) => {
                let p = ctx.path("initrd", &who, i)?;
                if !p.is_file() {
                    return ctx.err(
                        i.span(),
                        format!("{who}key 'initrd': no such file '{}'", p.display()),
                    );
                }
                Some(p)
            }
            None => None,
        };
        let cpus = match pick!(cpus) {
            Some(v) if (1..=crate::vmm::MAX_CPUS as i64).contains(v.get_ref()) => {
                *v.get_ref() as u32
            }
            Some(v) => {
                return ctx.err(
                    v.span(),
                    format!(
                        "{who}key 'cpus': {} is not between 1 and {}",
                        v.get_ref(),
                        crate::vmm::MAX_CPUS
                    ),
                )
            }
            None => 1,
        };
        let memory = match pick!(memory) {
            Some(m) if parse_size(m.get_ref()).is_some_and(|b| b >= arch::layout::MIN_MEMORY) => {
                m.get_ref().clone()
            }
            Some(m) => {
                return ctx.err(
                    m.span(),
                    format!(
                        "{who}key 'memory': bad size '{}' (a number with K, M or G, at least 16M)",
                        m.get_ref()
                    ),
                )
            }
            None => "128M".into(),
        };
        let transport = match pick!(transport).map(|t| (t, t.get_ref().as_str())) {
            None | Some((_, "pci")) => Transport::Pci,
            Some((_, "mmio")) => Transport::Mmio,
            Some((t, other)) => {
                return ctx.err(
                    t.span(),
                    format!("{who}key 'transport': '{other}' is not pci or mmio"),
                )
            }
        };
        let irqchip = match pick!(irqchip).map(|t| (t, t.get_ref().as_str())) {
            None => None,
            Some((_, "split")) => Some(crate::irqchip::IrqChipMode::Split),
            Some((_, "kernel")) => Some(crate::irqchip::IrqChipMode::Kernel),
            Some((t, other)) => {
                return ctx.err(
                    t.span(),
                    format!("{who}key 'irqchip': '{other}' is not split or kernel"),
                )
            }
        };
        let timeout = match pick!(timeout) {
            Some(t) => {
                let v = t.get_ref().as_f64();
                if !(v.is_finite() && v > 0.0 && v <= MAX_TIMEOUT) {
                    return ctx.err(
                        t.span(),
                        format!("{who}key 'timeout': {v} is not a number of seconds above 0 and at most {MAX_TIMEOUT}"),
                    );
                }
                v
            }
            None => DEFAULT_TIMEOUT,
        };
        let expect = match pick!(expect) {
            Some(e) if (0..=255).contains(e.get_ref()) => *e.get_ref() as i32,
            Some(e) => {
                return ctx.err(
                    e.span(),
                    format!(
                        "{who}key 'expect': {} is not a status from 0 to 255",
                        e.get_ref()
                    ),
                )
            }
            None => 0,
        };
        let command = match pick!(command) {
            Some(cmd) => match cmd.get_ref() {
                RawCommand::Shell(s) if !s.trim().is_empty() => {
                    vec!["sh".into(), "-c".into(), s.clone()]
                }
                RawCommand::Argv(v) if !v.is_empty() && !v[0].is_empty() => v.clone(),
                _ => return ctx.err(cmd.span(), format!("{who}key 'command': empty command")),
            },
            None => return ctx.err(span, format!("{who}no 'command'")),
        };
        let list = |key: &str,
                    v: Option<&Spanned<Vec<String>>>,
                    is_path: bool|
         -> Result<Vec<String>, ManifestError> {
            let Some(v) = v else { return Ok(Vec::new()) };
            v.get_ref()
                .iter()
                .map(|s| {
                    let sp = Spanned::new(v.span(), s.clone());
                    let e = ctx.expand(key, &who, &sp)?;
                    // Only the host path (before ',' or ':') is made absolute.
                    let cut = e.find([',', ':']).unwrap_or(e.len());
                    let (p, rest) = e.split_at(cut);
                    if is_path && !p.is_empty() && !Path::new(p).is_absolute() {
                        Ok(format!("{}{rest}", ctx.dir.join(p).display()))
                    } else {
                        Ok(e)
                    }
                })
                .collect()
        };
        let disks = list("disks", pick!(disks), true)?;
        let add = list("add", pick!(add), true)?;
        if !add.is_empty() && initrd.is_none() {
            return ctx.err(span, format!("{who}'add' needs an 'initrd' to append to"));
        }
        let text_of = |key: &str, v: Option<&Spanned<String>>| {
            v.map(|s| ctx.expand(key, &who, s)).transpose()
        };
        cases.push(Case {
            name: n.clone(),
            kernel,
            initrd,
            cpus,
            memory,
            transport,
            irqchip,
            cmdline: text_of("cmdline", pick!(cmdline))?,
            extra_cmdline: text_of("extra_cmdline", pick!(extra_cmdline))?,
            disks,
            add,
            command,
            timeout,
            expect,
            snapshot,
            api_socket,
        });
    }
    Ok(cases)
}

/// Parse `K/N` (1 <= K <= N).
pub fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("bad --shard '{s}': use K/N with 1 <= K <= N, e.g. 1/2");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n): (usize, usize) = (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if k == 0 || n == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

/// The cases of shard `k` of `n`: positions `k-1`, `k-1+n`, ... in manifest order.
pub fn shard<T: Clone>(cases: &[T], k: usize, n: usize) -> Vec<T> {
    cases.iter().skip(k - 1).step_by(n).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Vec<Case>, ManifestError> {
        parse("m.toml", text, Path::new("/"))
    }

    const KERNEL: &str = "/proc/self/exe";

    fn err(text: &str) -> String {
        check(text).unwrap_err().to_string()
    }

    #[test]
    fn a_snapshot_without_a_kernel_must_exist() {
        let e = err("[[case]]\nname = 'a'\nsnapshot = '/nonexistent-snap'\ncommand = 'true'\n");
        assert!(
            e.contains("m.toml:3: case 'a': key 'snapshot': no snapshot in '/nonexistent-snap'"),
            "{e}"
        );
        let cases = check(&format!(
            "[defaults]\nkernel = '{KERNEL}'\nsnapshot = 'snaps/one'\n[[case]]\nname = 'a'\ncommand = 'true'\n"
        ))
        .unwrap();
        assert_eq!(cases[0].snapshot, Some(PathBuf::from("/snaps/one")));
    }

    #[test]
    fn an_api_socket_belongs_to_one_case_never_to_the_defaults() {
        let cases = check(&format!(
            "[[case]]\nname = 'a'\nkernel = '{KERNEL}'\ncommand = 'true'\napi_socket = 'run/a.sock'\n"
        ))
        .unwrap();
        assert_eq!(cases[0].api_socket, Some(PathBuf::from("/run/a.sock")));
        let e = err(&format!(
            "[defaults]\napi_socket = 'x.sock'\n[[case]]\nname = 'a'\nkernel = '{KERNEL}'\ncommand = 'true'\n"
        ));
        assert!(
            e.contains("m.toml:2: key 'api_socket': one socket per case"),
            "{e}"
        );
    }

    #[test]
    fn defaults_apply_and_cases_override_them() {
        let cases = check(&format!(
            "[defaults]\nkernel = '{KERNEL}'\ncpus = 2\ntimeout = 30\n\n[[case]]\nname = 'a'\ncommand = 'exit 3'\nexpect = 3\n\n[[case]]\nname = 'b'\ncpus = 1\ncommand = ['true']\ntransport = 'mmio'\nirqchip = 'kernel'\n"
        ))
        .unwrap();
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0].cpus, 2);
        assert_eq!(cases[0].command, ["sh", "-c", "exit 3"]);
        assert_eq!(cases[0].expect, 3);
        assert_eq!(cases[0].timeout, 30.0);
        assert_eq!(cases[1].cpus, 1);
        assert_eq!(cases[1].command, ["true"]);
        assert_eq!(cases[1].transport, Transport::Mmio);
        assert_eq!(cases[1].irqchip, Some(crate::irqchip::IrqChipMode::Kernel));
        assert_eq!(cases[0].irqchip, None);
    }

    #[test]
    fn unknown_key_names_the_line() {
        let e = err(&format!(
            "[[case]]\nname = 'a'\nkernel = '{KERNEL}'\ncomand = 'true'\n"
        ));
        assert!(e.starts_with("m.toml:4: "), "{e}");
        assert!(e.contains("comand"), "{e}");
    }

    #[test]
    fn missing_kernel_is_an_error_naming_the_case() {
        let e = err("[[case]]\nname = 'a'\ncommand = 'true'\n");
        assert!(e.starts_with("m.toml:1: case 'a': no 'kernel'"), "{e}");
        let e = err("[[case]]\nname = 'a'\nkernel = '/no/such/vmlinux'\ncommand = 'true'\n");
        assert!(
            e.starts_with("m.toml:3: case 'a': key 'kernel': no such file"),
            "{e}"
        );
    }

    #[test]
    fn bad_size_duplicate_names_and_zero_timeout_are_errors_at_their_line() {
        let base =
            format!("[defaults]\nkernel = '{KERNEL}'\ncommand = 'true'\n[[case]]\nname = 'a'\n");
        let e = err(&format!("{base}memory = '12Q'\n"));
        assert!(
            e.starts_with("m.toml:6: case 'a': key 'memory': bad size '12Q'"),
            "{e}"
        );
        let e = err(&format!("{base}[[case]]\nname = 'a'\n"));
        assert!(
            e.starts_with("m.toml:7: key 'name': duplicate case name 'a'"),
            "{e}"
        );
        let e = err(&format!("{base}timeout = 0\n"));
        assert!(e.starts_with("m.toml:6: case 'a': key 'timeout'"), "{e}");
        let e = err(&format!("{base}timeout = -1.5\n"));
        assert!(e.contains("key 'timeout'"), "{e}");
        let e = err(&format!("{base}cpus = 0\n"));
        assert!(e.contains("key 'cpus'"), "{e}");
        let e = err(&format!("{base}expect = 256\n"));
        assert!(e.contains("key 'expect'"), "{e}");
        let e = err(&format!("{base}transport = 'usb'\n"));
        assert!(e.contains("key 'transport'"), "{e}");
        let e = err(&format!("{base}irqchip = 'userspace'\n"));
        assert!(
            e.contains("key 'irqchip': 'userspace' is not split or kernel"),
            "{e}"
        );
    }

    #[test]
    fn unset_environment_variable_is_an_error() {
        let e =
            err("[[case]]\nname = 'a'\nkernel = '${SPLITVM_NO_SUCH_VAR_X}'\ncommand = 'true'\n");
        assert!(e.contains("SPLITVM_NO_SUCH_VAR_X is not set"), "{e}");
    }

    #[test]
    fn names_must_be_safe_directory_names() {
        let e = err(&format!(
            "[[case]]\nname = '../x'\nkernel = '{KERNEL}'\ncommand = 'true'\n"
        ));
        assert!(e.contains("key 'name'"), "{e}");
    }

    #[test]
    fn toml_syntax_errors_name_the_line() {
        let e = err("[[case]]\nname = 'a\n");
        assert!(e.starts_with("m.toml:2: "), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_the_manifest_directory() {
        let cases = parse(
            "m.toml",
            "[[case]]\nname = 'a'\nkernel = 'exe'\ncommand = 'true'\ndisks = ['d.img,readonly']\n",
            Path::new("/proc/self"),
        )
        .unwrap();
        assert_eq!(cases[0].kernel, Path::new("/proc/self/exe"));
        assert_eq!(cases[0].disks, ["/proc/self/d.img,readonly"]);
    }

    #[test]
    fn shards_cover_every_case_exactly_once() {
        let cases: Vec<u32> = (0..7).collect();
        for n in 1..5 {
            let mut all: Vec<u32> = (1..=n).flat_map(|k| shard(&cases, k, n)).collect();
            all.sort();
            assert_eq!(all, cases);
        }
        assert_eq!(parse_shard("2/3"), Ok((2, 3)));
        for bad in ["0/2", "3/2", "1", "a/b", "1/0"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }
}
