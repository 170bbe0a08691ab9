//! Where `wtchat serve`'s settings come from when its command line does not give them: an
//! environment variable, then a key of the TOML file named by `--config` (or
//! `WTCHAT_CONFIG`), then the default. Both names are derived from the flag's clap
//! definition — `--max-frame-bytes` is `WTCHAT_MAX_FRAME_BYTES` and the file key
//! `max_frame_bytes` — so a field added to `ServeArgs` has both without a line here.
//!
//! A value from the environment or the file becomes the flag itself, appended to the command
//! line before the real parse: it goes through the flag's own parser (the same `duration`,
//! the same engine syntax) and then the library's builder, exactly as if it had been typed.
//! Each setting comes whole from the first source that has it; the values of a repeatable
//! setting are never merged across sources. This module owns that layering, the file's
//! checks (unknown keys, types) and the effective configuration `wtchat config --check`
//! prints.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::builder::{BoolishValueParser, TypedValueParser};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, Id};

/// The id of the argument naming the file (`--config`, `WTCHAT_CONFIG`): a subcommand that
/// has it takes its settings from the environment and the file too.
pub const FILE_ARG: &str = "config";

/// What a masked secret is printed as.
const MASK: &str = "********";

/// One setting: a flag, its file key and its environment variable.
pub struct Setting<'a> {
    arg: &'a Arg,
    long: &'a str,
    /// The flag's name with underscores: `max_frame_bytes`.
    pub key: String,
    /// `WTCHAT_` and the key in capitals: `WTCHAT_MAX_FRAME_BYTES`.
    pub env: String,
}

/// How a setting takes values: a switch, one value, or a list (a repeatable flag).
enum Kind {
    Switch,
    One,
    List,
}

/// A setting's values from one source, as the texts its flag would be given.
enum Given {
    Switch(bool),
    Values(Vec<String>),
}

impl<'a> Setting<'a> {
    fn new(arg: &'a Arg) -> Setting<'a> {
        // Settings are named flags (the unit test of `wtchat` checks every one).
        let long = arg.get_long().expect("a setting is a --flag");
        let key = long.replace('-', "_");
        let env = format!("WTCHAT_{}", key.to_uppercase());
        Setting {
            arg,
            long,
            key,
            env,
        }
    }

    pub fn id(&self) -> &'a str {
        self.arg.get_id().as_str()
    }

    /// Printed masked: `token_secret`, `api_key`, and whatever secret comes next.
    pub fn is_secret(&self) -> bool {
        self.key.ends_with("_secret") || self.key.ends_with("_key")
    }

    fn kind(&self) -> Kind {
        match self.arg.get_action() {
            ArgAction::SetTrue => Kind::Switch,
            ArgAction::Append => Kind::List,
            _ => Kind::One,
        }
    }

    /// Whether the flag takes text as it is (a string or a path): a number in the file is
    /// then refused rather than turned into text.
    fn is_text(&self) -> bool {
        let parsed = self.arg.get_value_parser().type_id();
        [
            TypeId::of::<String>(),
            TypeId::of::<PathBuf>(),
            TypeId::of::<OsString>(),
        ]
        .into_iter()
        .any(|text| parsed == text)
    }

    /// An environment variable's value: a list is comma-separated, a switch is true or
    /// false (also 1/0, yes/no, on/off).
    fn read_env(&self, command: &Command, text: &str) -> Result<Given, String> {
        Ok(match self.kind() {
            Kind::Switch => Given::Switch(
                BoolishValueParser::new()
                    .parse_ref(command, None, OsStr::new(text))
                    .map_err(|_| format!("expected true or false, not {text:?}"))?,
            ),
            Kind::One => Given::Values(vec![text.to_owned()]),
            Kind::List => Given::Values(
                text.split(',')
                    .map(str::trim)
                    .filter(|value| !value.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
        })
    }

    /// A file value: a boolean for a switch, a list (or one value) for a repeatable
    /// setting, a string — or a number, where the flag does not take plain text — otherwise.
    fn read_file(&self, value: &toml::Value) -> Result<Given, String> {
        Ok(match (self.kind(), value) {
            (Kind::Switch, toml::Value::Boolean(on)) => Given::Switch(*on),
            (Kind::Switch, other) => return Err(expected("true or false", other)),
            (Kind::List, toml::Value::Array(values)) => Given::Values(
                values
                    .iter()
                    .map(|value| self.scalar(value))
                    .collect::<Result<_, _>>()?,
            ),
            (_, value) => Given::Values(vec![self.scalar(value)?]),
        })
    }

    fn scalar(&self, value: &toml::Value) -> Result<String, String> {
        match value {
            toml::Value::String(text) => Ok(text.clone()),
            toml::Value::Integer(n) if !self.is_text() => Ok(n.to_string()),
            toml::Value::Float(x) if !self.is_text() => Ok(x.to_string()),
            other if self.is_text() => Err(expected("a string", other)),
            other => Err(expected("a string or a number", other)),
        }
    }

    /// The flags that say what `given` says, each value checked by the flag's own parser
    /// so that a bad one is refused here, where its source can still be named.
    fn flags(&self, given: Given) -> Result<Vec<OsString>, String> {
        match given {
            Given::Switch(on) => Ok(on
                .then(|| format!("--{}", self.long).into())
                .into_iter()
                .collect()),
            Given::Values(values) => values
                .into_iter()
                .map(|value| {
                    self.check(&value)?;
                    Ok(format!("--{}={value}", self.long).into())
                })
                .collect(),
        }
    }

    /// Runs the flag's parser on `value` alone (in a command of its own: the real one would
    /// also check flags this one requires, which may come later).
    pub fn check(&self, value: &str) -> Result<(), String> {
        let probe = Command::new("wtchat").no_binary_name(true).arg(
            Arg::new("value")
                .long("value")
                .value_parser(self.arg.get_value_parser().clone()),
        );
        match probe.try_get_matches_from([format!("--value={value}")]) {
            Ok(_) => Ok(()),
            Err(error) => {
                let shown = if self.is_secret() {
                    "the value".to_owned()
                } else {
                    format!("{value:?}")
                };
                let reason = std::error::Error::source(&error)
                    .map_or_else(|| error.kind().to_string(), ToString::to_string);
                Err(format!("{shown} is not valid: {reason}"))
            }
        }
    }

    /// The effective value as TOML, or None when the library's default applies.
    fn effective(&self, matches: &ArgMatches) -> Option<toml::Value> {
        let value = match self.kind() {
            Kind::Switch => toml::Value::Boolean(matches.get_flag(self.id())),
            Kind::One => self.as_toml(matches.get_raw(self.id())?.next()?),
            Kind::List => toml::Value::Array(
                matches
                    .get_raw(self.id())?
                    .map(|value| self.as_toml(value))
                    .collect(),
            ),
        };
        Some(if self.is_secret() {
            toml::Value::String(MASK.to_owned())
        } else {
            value
        })
    }

    /// A flag's text as the file would say it: a number where the flag takes more than text
    /// (`60` for an idle timeout reads back as 60 seconds), a string otherwise.
    fn as_toml(&self, text: &OsStr) -> toml::Value {
        let text = text.to_string_lossy();
        match text.parse::<i64>() {
            Ok(n) if !self.is_text() => toml::Value::Integer(n),
            _ => toml::Value::String(text.into_owned()),
        }
    }
}

fn expected(what: &str, found: &toml::Value) -> String {
    let kind = found.type_str();
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("expected {what}, not {article} {kind}")
}

/// The settings among `command`'s arguments, in their order.
pub fn settings<'a>(command: &'a Command, ids: &[Id]) -> Vec<Setting<'a>> {
    command
        .get_arguments()
        .filter(|arg| ids.contains(arg.get_id()))
        .map(Setting::new)
        .collect()
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    CommandLine,
    Env(String),
    File(PathBuf),
}

/// Why the command line could not be completed.
pub enum Error {
    /// Refused by clap (with its usage text), or help and version, which clap prints.
    Usage(clap::Error),
    /// A file or variable that cannot be read or holds what no flag would take.
    Setting(String),
}

/// The command line with every setting filled in from its first source.
pub struct Completed {
    pub matches: ArgMatches,
    /// The subcommand whose settings were filled in, and where each given one came from.
    origins: Option<(String, BTreeMap<String, Origin>)>,
}

/// Parses `argv`, filling the settings (`ids`) of a subcommand that takes a `--config` file:
/// each that the command line does not give from its environment variable (`env` looks it
/// up), else from the file.
pub fn complete(
    command: &Command,
    mut argv: Vec<OsString>,
    ids: &[Id],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Completed, Error> {
    // A first look, to learn the subcommand, the file and which flags were typed; errors
    // are left for the real parse (a flag may require one that the file gives).
    let first = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&argv);
    let mut origins = None;
    if let Ok(first) = &first
        && let Some((name, matches)) = first.subcommand()
        && let Some(subcommand) = command.find_subcommand(name)
        && subcommand
            .get_arguments()
            .any(|arg| arg.get_id() == FILE_ARG)
    {
        let settings = settings(subcommand, ids);
        let file = match matches.get_one::<PathBuf>(FILE_ARG) {
            Some(path) => Some(File::read(path, &settings).map_err(Error::Setting)?),
            None => None,
        };
        let mut given = BTreeMap::new();
        for setting in &settings {
            if matches.value_source(setting.id()) == Some(ValueSource::CommandLine) {
                given.insert(setting.id().to_owned(), Origin::CommandLine);
                continue;
            }
            let from_env = env(&setting.env).filter(|value| !value.is_empty());
            let (values, origin) = if let Some(value) = from_env {
                let name = || format!("environment variable {}", setting.env);
                let values = value
                    .to_str()
                    .ok_or_else(|| format!("{}: not UTF-8", name()))
                    .and_then(|text| setting.read_env(subcommand, text))
                    .and_then(|given| setting.flags(given))
                    .map_err(|reason| Error::Setting(format!("{}: {reason}", name())))?;
                (values, Origin::Env(setting.env.clone()))
            } else if let Some(file) = &file
                && let Some(value) = file.table.get(&setting.key)
            {
                let values = setting
                    .read_file(value)
                    .and_then(|given| setting.flags(given))
                    .map_err(|reason| {
                        let path = file.path.display();
                        Error::Setting(format!("{path}: {}: {reason}", setting.key))
                    })?;
                (values, Origin::File(file.path.clone()))
            } else {
                continue;
            };
            argv.extend(values);
            given.insert(setting.id().to_owned(), origin);
        }
        origins = Some((name.to_owned(), given));
    }
    let matches = command
        .clone()
        .try_get_matches_from(argv)
        .map_err(Error::Usage)?;
    Ok(Completed { matches, origins })
}

impl Completed {
    /// Where a setting of the completed subcommand came from; None for its default.
    pub fn origin(&self, id: &str) -> Option<&Origin> {
        self.origins.as_ref()?.1.get(id)
    }

    /// The effective settings of the completed subcommand as TOML, one `key = value` a
    /// line with where it came from, secrets masked; a setting left to the library's
    /// default is a comment.
    pub fn describe(&self, command: &Command, ids: &[Id]) -> String {
        let Some((name, _)) = &self.origins else {
            return String::new();
        };
        let (Some(subcommand), Some(matches)) = (
            command.find_subcommand(name),
            self.matches.subcommand_matches(name),
        ) else {
            return String::new();
        };
        let mut text = String::from(
            "# wtchat's effective configuration: flag > environment > file > default\n",
        );
        for setting in settings(subcommand, ids) {
            let line = match setting.effective(matches) {
                Some(value) => {
                    let origin = match self.origin(setting.id()) {
                        Some(Origin::CommandLine) => format!("--{}", setting.long),
                        Some(Origin::Env(name)) => name.clone(),
                        Some(Origin::File(path)) => path.display().to_string(),
                        None => "default".to_owned(),
                    };
                    format!("{} = {value}  # {origin}", setting.key)
                }
                None => format!("# {}: the library's default", setting.key),
            };
            text.push_str(&line);
            text.push('\n');
        }
        text
    }
}

/// A configuration file, its keys all known.
struct File {
    path: PathBuf,
    table: toml::Table,
}

impl File {
    fn read(path: &Path, settings: &[Setting<'_>]) -> Result<File, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the configuration file {shown}: {e}"))?;
        let table: toml::Table = text.parse().map_err(|e| format!("{shown}: {e}"))?;
        let unknown: Vec<String> = table
            .keys()
            .filter(|key| !settings.iter().any(|setting| &setting.key == *key))
            .map(|key| {
                // `max-frame-bytes` is the flag, not the key: say which key was meant.
                let meant = key.replace('-', "_");
                if settings.iter().any(|setting| setting.key == meant) {
                    format!("{key} (did you mean {meant}?)")
                } else {
                    key.clone()
                }
            })
            .collect();
        if !unknown.is_empty() {
            let s = if unknown.len() == 1 { "" } else { "s" };
            return Err(format!(
                "{shown}: unknown key{s} {}: a key is a `wtchat serve` flag with underscores \
                 (max_frame_bytes for --max-frame-bytes)",
                unknown.join(", ")
            ));
        }
        Ok(File {
            path: path.to_owned(),
            table,
        })
    }
}
