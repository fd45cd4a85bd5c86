//! A minimal QMP client (QEMU Machine Protocol, docs/interop/qmp-spec.rst in QEMU's
//! source): JSON objects, one per line, over the unix socket in the guest's folder. The
//! server greets, we negotiate capabilities, then each command gets either `return` or
//! `error`; asynchronous `event` messages may arrive in between and are skipped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QEMU's control socket {path}: {source} (is the guest running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to QEMU over {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU refused `{command}`: {class}: {desc}")]
    Refused { command: String, class: String, desc: String },
    #[error("QEMU sent something that is not QMP: {0}")]
    Protocol(String),
}

#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// What one line from the server means to a caller waiting for a command's answer.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Return(Value),
    Error {
        class: String,
        desc: String,
    },
    /// An event or the greeting: not the answer, keep reading.
    Other,
}

/// Classify one line the server sent.
pub fn parse_reply(line: &str) -> Result<Reply, QmpError> {
    let v: Value = serde_json::from_str(line).map_err(|e| QmpError::Protocol(format!("{e}: {line}")))?;
    if let Some(r) = v.get("return") {
        return Ok(Reply::Return(r.clone()));
    }
    if let Some(e) = v.get("error") {
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        return Ok(Reply::Error { class: s("class"), desc: s("desc") });
    }
    if v.get("event").is_some() || v.get("QMP").is_some() {
        return Ok(Reply::Other);
    }
    Err(QmpError::Protocol(line.to_string()))
}

impl Qmp {
    pub fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect { path: path.to_owned(), source })?;
        let io = |source| QmpError::Io { path: path.to_owned(), source };
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut qmp = Qmp { path: path.to_owned(), reader: BufReader::new(stream), writer };
        // Greeting first, then capabilities negotiation (required before any command).
        let mut greeting = String::new();
        qmp.reader.read_line(&mut greeting).map_err(io)?;
        if !greeting.contains("\"QMP\"") {
            return Err(QmpError::Protocol(greeting));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Run one command and return its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let io = |source| QmpError::Io { path: self.path.clone(), source };
        writeln!(self.writer, "{msg}").map_err(io)?;
        loop {
            let mut line = String::new();
            let n =
                self.reader.read_line(&mut line).map_err(|source| QmpError::Io { path: self.path.clone(), source })?;
            if n == 0 {
                // `quit` closes the socket before or instead of answering.
                if command == "quit" {
                    return Ok(Value::Null);
                }
                return Err(QmpError::Protocol(format!("connection closed while waiting for `{command}`")));
            }
            match parse_reply(line.trim())? {
                Reply::Return(v) => return Ok(v),
                Reply::Error { class, desc } => return Err(QmpError::Refused { command: command.into(), class, desc }),
                Reply::Other => continue,
            }
        }
    }

    /// `query-status`: "running", "paused", "shutdown", …
    pub fn status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None)?;
        v.get("status").and_then(Value::as_str).map(str::to_string).ok_or_else(|| QmpError::Protocol(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as QEMU 10.0 sends them (captured from `-qmp unix:…` with socat).
    #[test]
    fn classifies_server_lines() {
        let greeting = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}"#;
        assert_eq!(parse_reply(greeting).unwrap(), Reply::Other);
        assert_eq!(parse_reply(r#"{"return": {}}"#).unwrap(), Reply::Return(json!({})));
        assert_eq!(
            parse_reply(r#"{"return": {"status": "paused", "singlestep": false, "running": false}}"#).unwrap(),
            Reply::Return(json!({"status": "paused", "singlestep": false, "running": false}))
        );
        let ev = r#"{"timestamp": {"seconds": 1764190000, "microseconds": 1}, "event": "POWERDOWN"}"#;
        assert_eq!(parse_reply(ev).unwrap(), Reply::Other);
        assert_eq!(
            parse_reply(r#"{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#)
                .unwrap(),
            Reply::Error { class: "CommandNotFound".into(), desc: "The command nope has not been found".into() }
        );
        assert!(parse_reply("garbage").is_err());
        assert!(parse_reply(r#"{"neither": 1}"#).is_err());
    }
}
