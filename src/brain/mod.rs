//! The call brain: one pure state machine per call.
//!
//! It takes [`Event`]s (what the caller said, digits, timers, agents, the queue, the callback
//! ledger) with the time they happened, and answers with [`Action`]s for the drivers to carry
//! out. It does no I/O and reads no clock, so every rule of a call is testable without a
//! network (the str0m / quinn-proto way). There is deliberately no action that ends a call:
//! only the caller hangs up.

mod call;
pub mod trial;

pub use call::CallBrain;

use crate::escape::EscapeMatch;
use crate::speech::verifier::Verdict;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Identifies one playback, so a late "finished" for a prompt that was stopped is not
/// mistaken for the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PlayId(pub u64);

/// The brain's timers. Each kind has at most one deadline; a fire for a deadline that was
/// cancelled or moved is ignored, so drivers need not race to cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// The caller was asked something and has not answered.
    NoInput,
    /// Time to tell a waiting caller their place and wait again.
    QueueAnnounce,
    /// Time to offer a waiting caller a callback again.
    CallbackReoffer,
    /// The caller's media is gone: the probe must be answered by then, or (once answered) it
    /// is time to probe again.
    MediaProbe,
    /// The caller stopped speaking: the final transcript is due by then, or recognition is
    /// behind and the caller goes to a person rather than wait.
    FinalTranscript,
    /// An agent's phone is ringing: it must answer by then, or the next agent is tried.
    AgentRing,
}

impl TimerKind {
    pub const ALL: [TimerKind; 6] = [
        TimerKind::NoInput,
        TimerKind::QueueAnnounce,
        TimerKind::CallbackReoffer,
        TimerKind::MediaProbe,
        TimerKind::FinalTranscript,
        TimerKind::AgentRing,
    ];
}

/// Why a caller was sent to a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteReason {
    /// They asked for a person ("human", "agent", ...).
    Keyword,
    /// They said the same thing twice: the machine is not helping.
    Repetition,
    /// They pressed 0.
    Dtmf,
    /// They said nothing, twice.
    NoInput,
    /// They were not understood, twice.
    NoMatch,
    /// Speech recognition failed or fell behind: a person, rather than silence.
    SpeechUnavailable,
}

impl RouteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteReason::Keyword => "keyword",
            RouteReason::Repetition => "repetition",
            RouteReason::Dtmf => "dtmf",
            RouteReason::NoInput => "no_input",
            RouteReason::NoMatch => "no_match",
            RouteReason::SpeechUnavailable => "speech_unavailable",
        }
    }
}

/// What the caller has told us, handed to the agent so they never ask again.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CallerContext {
    pub caller_id: Option<String>,
    pub language: String,
    /// Everything the caller said, in order (final transcripts, and the partial that routed).
    pub said: Vec<String>,
    /// Self-service topics they asked about.
    pub topics: Vec<String>,
    /// Digits they pressed.
    pub dtmf: String,
    /// The escape phrase that routed them, if any.
    pub escape: Option<EscapeMatch>,
}

/// When the caller wants to be called back.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackWhen {
    /// As soon as a person is free.
    Asap,
    /// The caller named a time, kept as said until the ledger interprets it.
    Requested(String),
}

/// A chosen callback time as the caller should hear it confirmed, in the centre's local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CallbackTime {
    /// 0 today, 1 tomorrow, ...
    pub days_from_today: u32,
    pub hour: u8,
    pub minute: u8,
}

/// A callback to commit to the ledger. The caller hears it confirmed only after
/// [`Event::CallbackStored`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallbackRequest {
    /// Number to call; the caller ID unless the caller gave another.
    pub number: Option<String>,
    pub when: CallbackWhen,
    pub reason: RouteReason,
    pub context: CallerContext,
    /// Made by Humanline itself because the call dropped while the caller waited for a person.
    pub automatic: bool,
}

/// Everything that can happen to a call, as the drivers report it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    CallStarted {
        caller_id: Option<String>,
        language: Option<String>,
    },
    PromptFinished {
        play: PlayId,
    },
    SpeechStarted,
    SpeechEnded,
    /// What the keyword verifier heard in the decode whose transcript comes next (the
    /// best phrase of each kind, with its score and threshold). It applies to the next
    /// `PartialTranscript` or `FinalTranscript` only: a passed escape routes, a passed yes or
    /// no answers a callback offer, whatever the transcript's words.
    Verified {
        verdicts: Vec<Verdict>,
    },
    PartialTranscript {
        text: String,
    },
    FinalTranscript {
        text: String,
    },
    Dtmf {
        digit: char,
    },
    TimerFired {
        timer: TimerKind,
    },
    AgentOffered {
        agent: String,
    },
    AgentAnswered {
        agent: String,
    },
    AgentDeclined {
        agent: String,
    },
    AgentLeft,
    /// Every agent is busy or unreachable for now; the caller stays queued.
    NoAgentAvailable,
    QueueStatus {
        position: u32,
        estimated_wait: Duration,
    },
    CallbackStored {
        id: String,
        /// When the call will come, if the caller chose a time (local time of the centre).
        at: Option<CallbackTime>,
    },
    CallbackStoreFailed {
        error: String,
    },
    /// The number to call back is not one Humanline may dial (withheld, a SIP user name,
    /// not on the operator's list): nothing was stored, the caller is asked for another.
    CallbackNumberRefused {
        why: String,
    },
    /// Speech recognition failed or is falling behind real time for this call.
    SpeechEngineDegraded,
    /// No media from the caller for long. Their network may be gone (no BYE came), or they
    /// are just quiet: phones with silence suppression and WebRTC with DTX send nothing while
    /// the caller says nothing. The brain asks for a probe ([`Action::ProbeCaller`]) before
    /// deciding anything.
    MediaLost,
    /// The caller's media flows again: they are exactly where they were.
    MediaResumed,
    /// The caller's phone answered the probe: their signalling is alive.
    ProbeAnswered,
    /// The probe failed (no answer, 408, 481, transport error): their signalling is gone too.
    ProbeFailed,
    CallerHungUp,
}

/// What the brain asks the drivers to do. No variant ends the call.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Play a prompt, replacing whatever is playing (hold music included) at once.
    /// `text` has its placeholders filled in.
    Play {
        play: PlayId,
        prompt: String,
        /// The language the prompt is in (the caller may have switched).
        language: String,
        text: String,
        /// The values of the text's placeholders, for drivers that splice recordings.
        vars: Vec<(String, String)>,
        audio: Option<PathBuf>,
        barge_in: bool,
    },
    StopPlayback,
    /// Loop the hold music for a waiting caller until something else is played or playback
    /// is stopped: a caller in line never hears dead air between announcements.
    PlayHold {
        play: PlayId,
    },
    /// Ask the caller's phone whether it is still there (an in-dialog OPTIONS), then report
    /// [`Event::ProbeAnswered`] or [`Event::ProbeFailed`].
    ProbeCaller,
    /// Stop ringing this agent (hang up their unanswered leg, tell the queue they did not
    /// answer): the next agent is tried. The caller's own leg is untouched.
    StopRinging {
        agent: String,
    },
    /// The caller is expected to answer now.
    Listen,
    /// Recognise speech in another language from now on.
    SetLanguage {
        code: String,
    },
    /// Put the caller in the agent queue now and ring an agent, with what they said.
    RouteToAgent {
        reason: RouteReason,
        context: CallerContext,
    },
    /// A callback is being offered (the prompt follows as a `Play`).
    OfferCallback,
    /// Commit this callback to the ledger, then report `CallbackStored`,
    /// `CallbackStoreFailed` or `CallbackNumberRefused`.
    StoreCallback(Box<CallbackRequest>),
    /// The caller reached a person: the stored callback `id` is kept, never dialed.
    KeepCallback {
        id: String,
    },
    SetTimer {
        timer: TimerKind,
        at: Instant,
    },
    CancelTimer {
        timer: TimerKind,
    },
}

/// Where a call stands, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    NotStarted,
    /// Talking with the IVR.
    Ivr,
    /// Waiting for a person (or ringing one).
    Queued,
    WithAgent,
    /// The caller hung up, or both their media and their signalling are gone (the probe went
    /// unanswered while no media came). Drivers then release what they hold for the call.
    Ended,
}
