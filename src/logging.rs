//! Log output: human-readable lines on stderr, optionally appended to a file.
//!
//! The admin console edits a prompt on the same terminal. A log line written
//! straight to stderr would land in the middle of what the admin is typing, so
//! while the console is active it installs a printer with
//! [`set_console_printer`] and receives each log line to print above its
//! prompt. The file copy is never affected by this.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use tracing::Subscriber;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogLevel;

/// Receives one formatted log event, without its trailing newline.
pub type ConsolePrinter = Box<dyn FnMut(String) + Send>;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    // The OS error is part of the message rather than a `source`: it is what
    // the person has to act on, and it would otherwise be printed twice by
    // error reporters that walk the chain.
    #[error("cannot open log file {}: {error}", path.display())]
    OpenFile { path: PathBuf, error: io::Error },
    /// A global subscriber (or `log` logger) was installed before.
    #[error("logging is already initialised")]
    AlreadyInitialised(#[source] tracing_subscriber::util::TryInitError),
}

/// The printer slot used by the global subscriber.
static CONSOLE: ConsoleSlot = ConsoleSlot::new();

/// Installs the global subscriber: events at `level` and above go to stderr
/// (or the console printer) and, when `log_file` is given, are appended to
/// that file.
///
/// Fails rather than panics when called twice, so a caller that sets up
/// logging in several places (tests, embedding) can ignore the second call.
pub fn init(level: LogLevel, log_file: Option<&Path>) -> Result<(), LoggingError> {
    let file = log_file.map(open_log_file).transpose()?;
    let ansi = io::stderr().is_terminal();
    subscriber(level, file, &CONSOLE, ansi)
        .try_init()
        .map_err(LoggingError::AlreadyInitialised)
}

/// Sends the stderr half of the log to `printer` until
/// [`clear_console_printer`] is called, replacing any previous printer.
///
/// Each call receives exactly one event, already formatted (timestamp, level,
/// spans, message, and ANSI colours when stderr is a terminal), with the
/// trailing newline removed: line-editing libraries add their own. The printer
/// must not block for long, since other threads' log lines wait for it.
pub fn set_console_printer(printer: ConsolePrinter) {
    CONSOLE.set(Some(printer));
}

/// Sends log lines to stderr again, e.g. when the console stops reading.
pub fn clear_console_printer() {
    CONSOLE.set(None);
}

fn open_log_file(path: &Path) -> Result<File, LoggingError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| LoggingError::OpenFile {
            path: path.to_owned(),
            error,
        })
}

/// The subscriber `init` installs, separate so tests can run it scoped.
fn subscriber(
    level: LogLevel,
    file: Option<File>,
    console: &'static ConsoleSlot,
    ansi: bool,
) -> impl Subscriber + Send + Sync {
    let level = LevelFilter::from_level(level.as_tracing());
    // rustyline logs every key press at debug level through the `log` crate,
    // which try_init bridges into tracing: that would flood the log and copy
    // what the admin types (passwords included) into the log file.
    let filter = Targets::new()
        .with_default(level)
        .with_target("rustyline", level.min(LevelFilter::WARN));
    let stderr = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(ConsoleMakeWriter { slot: console });
    let file = file.map(|file| {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(false)
            .fmt_fields(PlainFields::default())
            .with_writer(file)
    });
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .with(filter)
}

/// The default field format under a type of its own.
///
/// The fmt layer formats a span's fields once and caches the text in the span,
/// keyed by the field formatter's type. With the same type on both layers the
/// file would reuse the stderr layer's text, colour codes included.
#[derive(Default)]
struct PlainFields(DefaultFields);

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        self.0.format_fields(writer, fields)
    }
}

/// Where the stderr half of the log goes: stderr itself, or the console's
/// printer while one is set.
struct ConsoleSlot {
    printer: Mutex<Option<ConsolePrinter>>,
}

thread_local! {
    /// Set while this thread runs the printer. A log event raised from inside
    /// the printer (by the printer itself or a library it calls) would wait
    /// for the lock this thread holds; it goes to stderr instead.
    static IN_PRINTER: Cell<bool> = const { Cell::new(false) };
}

impl ConsoleSlot {
    const fn new() -> Self {
        Self {
            printer: Mutex::new(None),
        }
    }

    /// A panic inside a printer poisons the lock but leaves the slot usable,
    /// so the poison is ignored rather than taking logging down with it.
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ConsolePrinter>> {
        self.printer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, printer: Option<ConsolePrinter>) {
        let old = std::mem::replace(&mut *self.lock(), printer);
        // Dropped after the lock is released: dropping a printer may log.
        drop(old);
    }

    /// Delivers one whole formatted event.
    fn emit(&self, event: &[u8]) {
        if event.is_empty() {
            return;
        }
        if !IN_PRINTER.get() {
            let mut printer = self.lock();
            if let Some(printer) = printer.as_mut() {
                let text = String::from_utf8_lossy(event);
                let line = text.strip_suffix('\n').unwrap_or(&text);
                let _running = PrinterGuard::enter();
                printer(line.to_owned());
                return;
            }
        }
        // Nowhere to report a failing stderr.
        let _ = io::stderr().lock().write_all(event);
    }
}

/// Marks this thread as running the printer until dropped, even when the
/// printer panics.
struct PrinterGuard;

impl PrinterGuard {
    fn enter() -> Self {
        IN_PRINTER.set(true);
        Self
    }
}

impl Drop for PrinterGuard {
    fn drop(&mut self) {
        IN_PRINTER.set(false);
    }
}

/// Hands the fmt layer one [`EventWriter`] per event.
#[derive(Clone, Copy)]
struct ConsoleMakeWriter {
    slot: &'static ConsoleSlot,
}

impl<'a> MakeWriter<'a> for ConsoleMakeWriter {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            slot: self.slot,
            buf: Vec::with_capacity(256),
        }
    }
}

/// Collects one event and delivers it on drop. The fmt layer asks for a new
/// writer per event, so delivering on drop means the printer only ever sees
/// whole events, however the formatter splits its writes.
struct EventWriter {
    slot: &'static ConsoleSlot,
    buf: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    /// Does nothing: delivering part of an event early would split it.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        self.slot.emit(&self.buf);
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::Arc;

    use super::*;

    type Lines = Arc<Mutex<Vec<String>>>;

    /// A slot of its own per test, so tests never touch the global one.
    fn slot_with_collector() -> (&'static ConsoleSlot, Lines) {
        let slot: &'static ConsoleSlot = Box::leak(Box::new(ConsoleSlot::new()));
        let lines = Lines::default();
        let sink = Arc::clone(&lines);
        slot.set(Some(Box::new(move |line| {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line)
        })));
        (slot, lines)
    }

    fn take(lines: &Lines) -> Vec<String> {
        std::mem::take(&mut *lines.lock().unwrap_or_else(PoisonError::into_inner))
    }

    #[test]
    fn printer_receives_whole_events_once_each() {
        let (slot, lines) = slot_with_collector();
        let make = ConsoleMakeWriter { slot };
        {
            let mut w = make.make_writer();
            w.write_all(b"2024 INFO ").unwrap();
            w.flush().unwrap();
            w.write_all(b"hello\n").unwrap();
            assert!(take(&lines).is_empty(), "nothing before the event ends");
        }
        drop(make.make_writer()); // an empty event prints nothing
        assert_eq!(take(&lines), ["2024 INFO hello"]);
    }

    #[test]
    fn formatted_events_with_spans_reach_the_printer_and_the_file() {
        let (slot, lines) = slot_with_collector();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.log");
        let file = open_log_file(&path).unwrap();
        let subscriber = subscriber(LogLevel::Info, Some(file), slot, true);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("client", user = "alice");
            let _entered = span.enter();
            tracing::info!("joined");
            tracing::debug!("too verbose");
            tracing::warn!("two\nlines");
        });

        let printed = take(&lines);
        assert_eq!(printed.len(), 2, "{printed:?}");
        assert!(
            printed[0].contains("joined") && printed[0].contains("user"),
            "{printed:?}"
        );
        assert!(printed.iter().all(|l| !l.ends_with('\n')));
        assert!(printed[1].ends_with("lines"), "{printed:?}");

        let written = std::fs::read_to_string(&path).unwrap();
        assert!(
            written.contains("client{user=\"alice\"}: joined\n"),
            "{written}"
        );
        assert!(
            !written.contains('\u{1b}'),
            "no ANSI in the file: {written}"
        );
        assert!(!written.contains("too verbose"));
    }

    #[test]
    fn a_printer_that_logs_does_not_deadlock() {
        let slot: &'static ConsoleSlot = Box::leak(Box::new(ConsoleSlot::new()));
        let lines = Lines::default();
        let sink = Arc::clone(&lines);
        slot.set(Some(Box::new(move |line| {
            // Re-enters the writer on this thread, as a logging library would.
            drop(ConsoleMakeWriter { slot }.make_writer());
            let mut nested = ConsoleMakeWriter { slot }.make_writer();
            let _ = nested.write_all(b"nested goes to stderr\n");
            drop(nested);
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        })));
        let mut w = ConsoleMakeWriter { slot }.make_writer();
        w.write_all(b"outer\n").unwrap();
        drop(w);
        assert_eq!(take(&lines), ["outer"]);
    }

    #[test]
    fn a_panicking_printer_does_not_break_logging() {
        let slot: &'static ConsoleSlot = Box::leak(Box::new(ConsoleSlot::new()));
        slot.set(Some(Box::new(|_| panic!("printer failed"))));
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut w = ConsoleMakeWriter { slot }.make_writer();
            let _ = w.write_all(b"boom\n");
        }));
        assert!(result.is_err());
        assert!(slot.printer.is_poisoned());
        assert!(!IN_PRINTER.get(), "the guard reset the flag");

        let lines = Lines::default();
        let sink = Arc::clone(&lines);
        slot.set(Some(Box::new(move |line| {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line)
        })));
        let mut w = ConsoleMakeWriter { slot }.make_writer();
        w.write_all(b"after\n").unwrap();
        drop(w);
        assert_eq!(take(&lines), ["after"]);
    }

    #[test]
    fn unopenable_log_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("server.log");
        let Err(e) = open_log_file(&path) else {
            panic!("opening under a missing directory should fail")
        };
        let message = e.to_string();
        assert!(message.contains("missing-dir"), "{message}");
        assert!(message.contains("server.log"), "{message}");
    }
}
