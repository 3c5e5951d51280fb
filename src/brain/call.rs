//! The rules of one call. See the module docs of `brain` for the contract.

use super::{
    Action, CallbackRequest, CallbackWhen, CallerContext, Event, Phase, PlayId, RouteReason,
    TimerKind,
};
use crate::callbacks::{names_time, spoken_number};
use crate::config::{Flow, Language, render};
use crate::escape::{EscapeMatch, MatchKind};
use crate::speech::verifier::{PhraseKind, Verdict};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Failures (no input, not understood) the IVR tolerates before it hands the caller to a
/// person: never a loop, never a disconnect (GetHuman #8).
const MAX_FAILURES: u8 = 2;
/// The SIP layer CANCELs a ringing agent at `agent_ring`; the brain's deadline comes a little
/// later, for a phone that never even said "ringing" (which cannot be CANCELled).
const RING_GRACE: Duration = Duration::from_secs(1);

/// What the brain knows of the caller's media. A gap in it is not a hang-up: quiet phones
/// (silence suppression, DTX) send nothing, so the caller is probed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallerMedia {
    Flowing,
    /// No media, a probe is out: answered by the `MediaProbe` deadline or the caller is gone.
    Probing,
    /// No media, but the caller's phone answered: probed again at the `MediaProbe` timer.
    Quiet,
}
/// Digits kept while a caller keys a number (E.164 has at most 15, with a prefix 19): keying
/// on (or an INFO flood) cannot grow the buffer.
const MAX_KEYED: usize = 20;
/// Digits kept in the context for the agent.
const MAX_DTMF_KEPT: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallbackState {
    NotOffered,
    Offered,
    /// Accepted, but there is no number to call yet: the caller says or keys one.
    AskingNumber,
    Declined,
    Storing,
    Stored,
}

/// One call's state machine. Create it per call with the flow in force at call start (a
/// reloaded flow applies to new calls, so a call never changes rules midway).
#[derive(Debug)]
pub struct CallBrain {
    flow: Arc<Flow>,
    language: String,
    phase: Phase,
    context: CallerContext,
    /// Final transcripts with the topic each matched, for repetition.
    heard: Vec<(String, Option<String>)>,
    failures: u8,
    next_play: u64,
    playing: Option<(PlayId, String, bool)>,
    /// Hold music is looping (a waiting caller between prompts).
    holding: Option<PlayId>,
    timers: [Option<Instant>; TimerKind::ALL.len()],
    media: CallerMedia,
    /// The agent whose phone rings for this caller.
    ringing: Option<String>,
    queue: Option<(u32, Duration)>,
    callback: CallbackState,
    /// What the caller said when they named a time for the callback.
    callback_when: Option<String>,
    /// Digits keyed while giving a number to call back.
    keyed: String,
    /// The stored callback's ledger id, once stored.
    callback_id: Option<String>,
    /// The caller reached a person while their callback was being stored: keep it once it is.
    keep_when_stored: bool,
    route_reason: Option<RouteReason>,
    /// The phrase of an escape heard in a partial that waits for a second hearing: the
    /// next partial routes when it has an escape too (the same phrase, for a lone word),
    /// and the final decides whatever the partials said (`Flow::confirm_lone_word`,
    /// `Language::confirm_partials`).
    unconfirmed: Option<String>,
    /// The keyword verifier's verdicts for the transcript that comes next.
    verified: Vec<Verdict>,
    /// The last partial and its verdicts: a final with the same words and no verdicts of its
    /// own is that partial standing in for the final (the recognizer sends a pause partial's
    /// verdicts once), and is judged by them.
    last_partial: Option<(String, Vec<Verdict>)>,
}

impl CallBrain {
    pub fn new(flow: Arc<Flow>) -> Self {
        let language = flow.default_language.clone();
        Self {
            flow,
            context: CallerContext {
                language: language.clone(),
                ..Default::default()
            },
            language,
            phase: Phase::NotStarted,
            heard: Vec::new(),
            failures: 0,
            next_play: 0,
            playing: None,
            holding: None,
            timers: [None; TimerKind::ALL.len()],
            media: CallerMedia::Flowing,
            ringing: None,
            queue: None,
            callback: CallbackState::NotOffered,
            callback_when: None,
            keyed: String::new(),
            callback_id: None,
            keep_when_stored: false,
            route_reason: None,
            unconfirmed: None,
            verified: Vec::new(),
            last_partial: None,
        }
    }

    /// A call that is already with an agent when the brain takes over (a called-back
    /// customer): feed [`Event::AgentLeft`] when the agent goes, and the caller is back with
    /// the IVR, as after any agent.
    pub fn after_agent(flow: Arc<Flow>, caller_id: Option<String>) -> Self {
        let mut brain = Self::new(flow);
        brain.phase = Phase::WithAgent;
        brain.context.caller_id = caller_id;
        brain
    }

    /// The flow this call runs on (taken at its start).
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Why the caller was last sent to a person, if they were.
    pub fn route_reason(&self) -> Option<RouteReason> {
        self.route_reason
    }

    pub fn context(&self) -> &CallerContext {
        &self.context
    }

    /// The prompt playing now, if any.
    pub fn playing(&self) -> Option<(PlayId, &str)> {
        self.playing.as_ref().map(|(id, p, _)| (*id, p.as_str()))
    }

    /// Hold music is playing (a waiting caller between prompts).
    pub fn holding(&self) -> bool {
        self.holding.is_some()
    }

    /// When `timer` is due, if it is armed.
    pub fn deadline(&self, timer: TimerKind) -> Option<Instant> {
        self.timers[timer as usize]
    }

    /// The earliest armed timer: when the driver should next send `TimerFired`.
    pub fn next_timeout(&self) -> Option<(TimerKind, Instant)> {
        TimerKind::ALL
            .iter()
            .zip(&self.timers)
            .filter_map(|(k, t)| t.map(|at| (*k, at)))
            .min_by_key(|(_, at)| *at)
    }

    /// Feeds one event; returns what to do, in order. A route to an agent always comes first,
    /// so the agent's phone rings before anything else is done.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase == Phase::Ended {
            return out;
        }
        self.on_event(now, event, &mut out);
        self.settle(&mut out);
        out
    }

    fn on_event(&mut self, now: Instant, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::CallStarted {
                caller_id,
                language,
            } => self.on_start(now, caller_id, language, out),
            Event::PromptFinished { play } => self.on_prompt_finished(now, play, out),
            Event::SpeechStarted => {
                if let Some((_, _, true)) = self.playing {
                    // Barge-in fires on the start of speech, not on a transcript.
                    self.playing = None;
                    out.push(Action::StopPlayback);
                }
                if self.phase == Phase::Ivr && self.playing.is_none() {
                    // A safety net: should no transcript ever come, the caller is not left
                    // in silence.
                    self.arm(TimerKind::NoInput, now + self.flow.timers.no_input * 3, out);
                }
            }
            Event::SpeechEnded => {
                if self.phase == Phase::Ivr && self.playing.is_none() {
                    self.arm(TimerKind::NoInput, now + self.flow.timers.no_input, out);
                }
                if matches!(self.phase, Phase::Ivr | Phase::Queued) {
                    self.arm(
                        TimerKind::FinalTranscript,
                        now + self.flow.timers.final_transcript,
                        out,
                    );
                }
            }
            Event::Verified { verdicts } => self.verified = verdicts,
            Event::PartialTranscript { text } => self.on_partial(now, text, out),
            Event::FinalTranscript { text } => self.on_final(now, text, out),
            Event::Dtmf { digit } => self.on_dtmf(now, digit, out),
            Event::TimerFired { timer } => self.on_timer(now, timer, out),
            Event::AgentOffered { agent } => {
                if self.phase == Phase::Queued {
                    self.ringing = Some(agent);
                    self.arm(
                        TimerKind::AgentRing,
                        now + self.flow.timers.agent_ring + RING_GRACE,
                        out,
                    );
                }
            }
            Event::AgentDeclined { agent } => {
                if self.ringing.as_deref() == Some(agent.as_str()) {
                    self.ringing = None;
                    self.cancel(TimerKind::AgentRing, out);
                }
            }
            Event::AgentAnswered { .. } => {
                self.ringing = None;
                self.cancel(TimerKind::AgentRing, out);
                if self.phase == Phase::Queued {
                    self.phase = Phase::WithAgent;
                    // Served now: a callback they were promised is kept, not dialed later.
                    if let Some(id) = self.callback_id.take() {
                        out.push(Action::KeepCallback { id });
                    }
                    self.keep_when_stored = self.callback == CallbackState::Storing;
                    for t in TimerKind::ALL {
                        // The caller's media is still being looked after with an agent.
                        if t != TimerKind::MediaProbe {
                            self.cancel(t, out);
                        }
                    }
                    self.stop_playing(out);
                }
            }
            Event::AgentLeft => {
                if self.phase == Phase::WithAgent {
                    // Back with the IVR, never disconnected.
                    self.phase = Phase::Ivr;
                    self.failures = 0;
                    self.queue = None;
                    self.callback = CallbackState::NotOffered;
                    self.callback_id = None;
                    self.callback_when = None;
                    self.play("after_agent", &[], out);
                    out.push(Action::Listen);
                }
            }
            Event::NoAgentAvailable => {
                if self.phase == Phase::Queued && self.callback_offerable() {
                    self.offer_callback(now, out);
                }
            }
            Event::QueueStatus {
                position,
                estimated_wait,
            } => {
                let first = self.queue.is_none();
                self.queue = Some((position, estimated_wait));
                if self.phase == Phase::Queued {
                    if estimated_wait > self.flow.offer_callback_after_wait
                        && self.callback_offerable()
                    {
                        self.offer_callback(now, out);
                    } else if first && self.playing.is_none() {
                        self.announce_queue(now, out);
                    }
                }
            }
            Event::CallbackStored { id, at } => {
                if std::mem::take(&mut self.keep_when_stored) {
                    // Stored after the caller reached a person: keep it (never dial it),
                    // and say nothing into their conversation.
                    if self.callback == CallbackState::Storing {
                        self.callback = CallbackState::Stored;
                    }
                    out.push(Action::KeepCallback { id });
                } else if self.callback == CallbackState::Storing {
                    self.callback = CallbackState::Stored;
                    self.callback_id = Some(id);
                    self.cancel(TimerKind::CallbackReoffer, out);
                    // The promise is on disk: only now may the caller hear it.
                    match at {
                        None => self.play("callback_confirmed", &[], out),
                        Some(t) => {
                            let prompt = if t.days_from_today == 0 {
                                "callback_confirmed_at"
                            } else {
                                "callback_confirmed_tomorrow"
                            };
                            let vars = [
                                ("hour", t.hour.to_string()),
                                ("minute", format!("{:02}", t.minute)),
                            ];
                            self.play(prompt, &vars, out);
                        }
                    }
                }
            }
            Event::CallbackStoreFailed { .. } => {
                self.keep_when_stored = false;
                if self.callback == CallbackState::Storing && self.phase != Phase::Queued {
                    // Only the phase that asked hears about it.
                    self.callback = CallbackState::Declined;
                } else if self.callback == CallbackState::Storing {
                    self.callback = CallbackState::Declined;
                    self.play("callback_failed", &[], out);
                    self.arm(
                        TimerKind::CallbackReoffer,
                        now + self.flow.timers.callback_reoffer_interval,
                        out,
                    );
                }
            }
            Event::CallbackNumberRefused { .. } => {
                self.keep_when_stored = false;
                if self.callback == CallbackState::Storing {
                    if self.phase == Phase::Queued {
                        // Withheld, not a number, or not one we may call: ask for one.
                        self.callback_when = None;
                        self.ask_number(out);
                    } else {
                        self.callback = CallbackState::Declined;
                    }
                }
            }
            Event::SpeechEngineDegraded => {
                self.cancel(TimerKind::FinalTranscript, out);
                if self.phase == Phase::Ivr {
                    self.route(now, RouteReason::SpeechUnavailable, out);
                }
            }
            Event::MediaLost => {
                // Quiet or gone? Ask the caller's phone before deciding anything; meanwhile
                // the caller stays exactly where they are.
                if self.phase != Phase::NotStarted && self.media == CallerMedia::Flowing {
                    self.probe(now, out);
                }
            }
            Event::MediaResumed => {
                if self.media != CallerMedia::Flowing {
                    self.media = CallerMedia::Flowing;
                    self.cancel(TimerKind::MediaProbe, out);
                }
            }
            Event::ProbeAnswered => {
                if self.media == CallerMedia::Probing {
                    // Their phone is there, just quiet (silence suppression, DTX): look again
                    // later, for as long as no media comes.
                    self.media = CallerMedia::Quiet;
                    self.arm(
                        TimerKind::MediaProbe,
                        now + self.flow.timers.probe_interval,
                        out,
                    );
                }
            }
            Event::ProbeFailed => {
                if self.media == CallerMedia::Probing {
                    self.dropped(out);
                }
            }
            Event::CallerHungUp => self.end(out),
        }
    }

    fn lang(&self) -> &Language {
        self.flow
            .language(&self.language)
            .unwrap_or_else(|| self.flow.default_language())
    }

    fn on_start(
        &mut self,
        now: Instant,
        caller_id: Option<String>,
        language: Option<String>,
        out: &mut Vec<Action>,
    ) {
        if self.phase != Phase::NotStarted {
            return;
        }
        if let Some(code) = language.filter(|c| self.flow.language(c).is_some()) {
            self.language = code.clone();
            self.context.language = code.clone();
            out.push(Action::SetLanguage { code });
        }
        self.context.caller_id = caller_id;
        self.phase = Phase::Ivr;
        self.play("greeting", &[], out);
        out.push(Action::Listen);
        let _ = now;
    }

    fn on_prompt_finished(&mut self, now: Instant, play: PlayId, out: &mut Vec<Action>) {
        let Some((current, prompt, barge_in)) = self.playing.take() else {
            return;
        };
        if current != play {
            // A late "finished" for a prompt that was replaced: the current one plays on,
            // as interruptible as it was.
            self.playing = Some((current, prompt, barge_in));
            return;
        }
        match self.phase {
            Phase::Ivr if prompt != "connecting" => {
                self.arm(TimerKind::NoInput, now + self.flow.timers.no_input, out);
            }
            Phase::Queued if prompt == "connecting" && self.queue.is_some() => {
                self.announce_queue(now, out)
            }
            _ => {}
        }
    }

    /// The verifier's passed verdict of `kind` for this transcript, if any.
    fn verified(&self, kind: PhraseKind) -> Option<&Verdict> {
        self.verified.iter().find(|v| v.kind == kind && v.passed())
    }

    /// An escape the keyword verifier heard, as the match the agent sees.
    fn verified_escape(&self, text: &str) -> Option<EscapeMatch> {
        self.verified(PhraseKind::Escape).map(|v| EscapeMatch {
            phrase: v.phrase.clone(),
            heard: text.trim().to_string(),
            kind: MatchKind::Verified,
            lone_word: false,
            echo_shaped: false,
            needs_last_word: false,
        })
    }

    /// The escape heard in `text`: the text matcher's, else the keyword verifier's. None
    /// when the transcript is nothing but escape words and the model was unsure of it: that
    /// is the decoder writing the escape words of its prompt on unclear audio, and the
    /// verifier, which scores phrases against the transcript, cannot tell either
    /// ([`Verdict::doubts_echo`]).
    fn escape_in(&self, text: &str) -> Option<EscapeMatch> {
        let m = self.flow.escape.detect(text);
        let doubted = m.as_ref().is_some_and(|m| m.echo_shaped)
            && self
                .verified
                .iter()
                .any(|v| v.kind == PhraseKind::Escape && v.doubts_echo());
        if doubted {
            return None;
        }
        m.or_else(|| self.verified_escape(text))
    }

    fn on_partial(&mut self, now: Instant, text: String, out: &mut Vec<Action>) {
        let heard = self.verified_escape(&text);
        let found = self.escape_in(&text);
        self.last_partial = Some((text.clone(), std::mem::take(&mut self.verified)));
        if self.phase != Phase::Ivr {
            return;
        }
        // Decide while the caller is still speaking: an escape in a partial routes now.
        let Some(m) = found else {
            self.unconfirmed = None;
            return;
        };
        // Unless it is worth a second hearing. Where the language asks for it, every
        // escape the text matcher found only in the partial's last word, or that only the
        // verifier heard: a partial's last word is often a longer word cut short, and the
        // verifier scores phrases against a transcript that is still growing. Elsewhere, an
        // escape word alone heard for the first time, unless the verifier is confident:
        // Whisper sometimes writes a word of its prompt alone for a moment of other speech.
        let confirm_partials = self.lang().confirm_partials;
        let unsure = if confirm_partials {
            m.kind == MatchKind::Verified || m.needs_last_word
        } else {
            m.lone_word && self.flow.confirm_lone_word && heard.is_none()
        };
        let confirmed = self
            .unconfirmed
            .as_deref()
            .is_some_and(|before| confirm_partials || before == m.phrase);
        if unsure && !confirmed {
            self.unconfirmed = Some(m.phrase);
            return;
        }
        self.unconfirmed = None;
        self.context.said.push(text);
        self.context.escape = Some(m);
        self.route(now, RouteReason::Keyword, out);
    }

    fn on_final(&mut self, now: Instant, text: String, out: &mut Vec<Action>) {
        // The final is what the caller said: it decides, whatever a partial ended in.
        self.unconfirmed = None;
        if let Some((partial, verdicts)) = self.last_partial.take()
            && self.verified.is_empty()
            && partial == text
        {
            self.verified = verdicts;
        }
        self.cancel(TimerKind::FinalTranscript, out);
        match self.phase {
            Phase::Ivr => self.on_ivr_answer(now, text, out),
            Phase::Queued => self.on_queue_answer(now, text, out),
            _ => {}
        }
        self.verified.clear();
    }

    fn on_ivr_answer(&mut self, now: Instant, text: String, out: &mut Vec<Action>) {
        self.cancel(TimerKind::NoInput, out);
        let text = text.trim().to_string();
        if !text.is_empty() {
            self.context.said.push(text.clone());
        }
        // An escape by either the text matcher or the keyword verifier routes.
        if let Some(m) = self.escape_in(&text) {
            self.context.escape = Some(m);
            return self.route(now, RouteReason::Keyword, out);
        }
        // "Nederlands", "English": the caller picks their language (GetHuman #9).
        if let Some(switch) = self
            .flow
            .languages
            .values()
            .find(|l| l.code != self.language && l.switch_to.matches(&text))
        {
            let code = switch.code.clone();
            self.language = code.clone();
            self.context.language = code.clone();
            out.push(Action::SetLanguage { code });
            self.play("greeting", &[], out);
            out.push(Action::Listen);
            return;
        }
        let lang = self.lang();
        if lang
            .repetition
            .repeats(&text, self.heard.iter().map(|(t, _)| t.as_str()))
        {
            return self.route(now, RouteReason::Repetition, out);
        }
        let topic = lang
            .topics
            .iter()
            .find(|t| t.keywords.matches(&text))
            .map(|t| (t.name.clone(), t.prompt.clone()));
        let last_topic = self.heard.last().and_then(|(_, t)| t.clone());
        self.heard
            .push((text, topic.as_ref().map(|(n, _)| n.clone())));
        match topic {
            // The same topic again: the answer did not help.
            Some((name, _)) if last_topic.as_deref() == Some(name.as_str()) => {
                self.route(now, RouteReason::Repetition, out)
            }
            Some((name, prompt)) => {
                self.context.topics.push(name);
                self.play(&prompt, &[], out);
                out.push(Action::Listen);
            }
            None => self.fail(now, RouteReason::NoMatch, out),
        }
    }

    fn on_queue_answer(&mut self, now: Instant, text: String, out: &mut Vec<Action>) {
        if !text.trim().is_empty() {
            self.context.said.push(text.trim().to_string());
        }
        let lang = self.lang();
        let (mut yes, mut no) = (lang.yes.matches(&text), lang.no.matches(&text));
        // The verifier's answer counts when the words do not say otherwise; heard both, the
        // better-scoring one wins.
        if !yes && !no {
            match (
                self.verified(PhraseKind::Yes),
                self.verified(PhraseKind::No),
            ) {
                (Some(y), Some(n)) if y.score >= n.score => yes = true,
                (Some(_), Some(_)) => no = true,
                (Some(_), None) => yes = true,
                (None, Some(_)) => no = true,
                (None, None) => {}
            }
        }
        let number = spoken_number(&text);
        match self.callback {
            CallbackState::Offered => {
                // "yes", "call me at three", "tomorrow morning", "call me on 06 1234 5678".
                let timed = names_time(&text);
                if (yes && !no) || timed || number.is_some() {
                    self.callback_when = timed.then(|| text.trim().to_string());
                    self.accept_callback(number, out);
                } else if no {
                    self.decline_callback(now, out);
                }
            }
            CallbackState::AskingNumber => match number {
                Some(n) => self.store_callback(n, out),
                None if no && !yes => self.decline_callback(now, out),
                None => self.play("callback_ask_number", &[], out),
            },
            _ => {}
        }
    }

    fn on_dtmf(&mut self, now: Instant, digit: char, out: &mut Vec<Action>) {
        if self.context.dtmf.len() < MAX_DTMF_KEPT {
            self.context.dtmf.push(digit);
        }
        match (self.phase, digit) {
            (Phase::Ivr, '0') => self.route(now, RouteReason::Dtmf, out),
            (Phase::Queued, '1') if self.callback == CallbackState::Offered => {
                self.callback_when = None;
                self.accept_callback(None, out)
            }
            (Phase::Queued, '2') if self.callback == CallbackState::Offered => {
                self.decline_callback(now, out)
            }
            // Another number than the one they call from.
            (Phase::Queued, '3') if self.callback == CallbackState::Offered => {
                self.callback_when = None;
                self.ask_number(out)
            }
            (Phase::Queued, d) if self.callback == CallbackState::AskingNumber => match d {
                '0'..='9' if self.keyed.len() < MAX_KEYED => self.keyed.push(d),
                '0'..='9' => {}
                '#' if self.keyed.len() >= 3 => {
                    let number = std::mem::take(&mut self.keyed);
                    self.store_callback(number, out)
                }
                // '*' starts again; '#' after too few digits asks again.
                _ => {
                    self.keyed.clear();
                    self.play("callback_ask_number", &[], out)
                }
            },
            _ => {}
        }
    }

    fn on_timer(&mut self, now: Instant, timer: TimerKind, out: &mut Vec<Action>) {
        let slot = &mut self.timers[timer as usize];
        match *slot {
            Some(at) if at <= now => *slot = None,
            // Cancelled, or moved later: a stale fire.
            _ => return,
        }
        match (timer, self.phase) {
            (TimerKind::NoInput, Phase::Ivr) => self.fail(now, RouteReason::NoInput, out),
            (TimerKind::QueueAnnounce, Phase::Queued) => {
                if self.playing.is_some() {
                    self.arm(TimerKind::QueueAnnounce, now + Duration::from_secs(5), out);
                } else {
                    self.announce_queue(now, out);
                }
            }
            (TimerKind::CallbackReoffer, Phase::Queued)
                if self.callback_offerable() || self.callback == CallbackState::AskingNumber =>
            {
                self.offer_callback(now, out)
            }
            (TimerKind::MediaProbe, _) => match self.media {
                // No media and no answer in time: the caller is gone.
                CallerMedia::Probing => self.dropped(out),
                CallerMedia::Quiet => self.probe(now, out),
                CallerMedia::Flowing => {}
            },
            // Recognition is behind: a person, rather than a caller left waiting.
            (TimerKind::FinalTranscript, Phase::Ivr) => {
                self.route(now, RouteReason::SpeechUnavailable, out)
            }
            (TimerKind::AgentRing, _) => {
                if let Some(agent) = self.ringing.take() {
                    out.push(Action::StopRinging { agent });
                }
            }
            _ => {}
        }
    }

    /// Not understood or not heard: ask again once, then hand over to a person.
    fn fail(&mut self, now: Instant, why: RouteReason, out: &mut Vec<Action>) {
        self.failures += 1;
        if self.failures >= MAX_FAILURES {
            return self.route(now, why, out);
        }
        let prompt = if why == RouteReason::NoInput {
            "reprompt_no_input"
        } else {
            "reprompt_no_match"
        };
        self.play(prompt, &[], out);
        out.push(Action::Listen);
    }

    fn route(&mut self, now: Instant, reason: RouteReason, out: &mut Vec<Action>) {
        if self.phase != Phase::Ivr {
            return;
        }
        self.phase = Phase::Queued;
        self.route_reason = Some(reason);
        // First, so the agent's phone rings before anything else happens.
        out.insert(
            0,
            Action::RouteToAgent {
                reason,
                context: self.context.clone(),
            },
        );
        self.cancel(TimerKind::NoInput, out);
        self.play("connecting", &[], out);
        self.arm(
            TimerKind::QueueAnnounce,
            now + self.flow.timers.queue_announce_interval,
            out,
        );
    }

    fn announce_queue(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Some((position, wait)) = self.queue {
            let minutes = wait.as_secs().div_ceil(60).max(1);
            self.play(
                "queue_position",
                &[
                    ("position", position.to_string()),
                    ("minutes", minutes.to_string()),
                ],
                out,
            );
        }
        self.arm(
            TimerKind::QueueAnnounce,
            now + self.flow.timers.queue_announce_interval,
            out,
        );
    }

    fn callback_offerable(&self) -> bool {
        matches!(
            self.callback,
            CallbackState::NotOffered | CallbackState::Declined
        )
    }

    fn offer_callback(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.callback = CallbackState::Offered;
        out.push(Action::OfferCallback);
        self.play("callback_offer", &[], out);
        out.push(Action::Listen);
        self.arm(
            TimerKind::CallbackReoffer,
            now + self.flow.timers.callback_reoffer_interval,
            out,
        );
    }

    /// Yes to a callback: on `number`, else the caller ID, else the caller is asked for one.
    fn accept_callback(&mut self, number: Option<String>, out: &mut Vec<Action>) {
        match number.or_else(|| self.context.caller_id.clone()) {
            Some(n) => self.store_callback(n, out),
            None => self.ask_number(out),
        }
    }

    fn ask_number(&mut self, out: &mut Vec<Action>) {
        self.callback = CallbackState::AskingNumber;
        self.keyed.clear();
        self.play("callback_ask_number", &[], out);
        out.push(Action::Listen);
    }

    fn store_callback(&mut self, number: String, out: &mut Vec<Action>) {
        self.callback = CallbackState::Storing;
        self.cancel(TimerKind::CallbackReoffer, out);
        if self.playing.is_some() || self.holding.is_some() {
            // Nothing about this callback may be heard until it is stored (nor anything
            // that could be taken for it).
            self.playing = None;
            self.holding = None;
            out.push(Action::StopPlayback);
        }
        let mut request = self.callback_request(false);
        if let Action::StoreCallback(r) = &mut request {
            r.number = Some(number);
        }
        out.push(request);
    }

    fn decline_callback(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.callback = CallbackState::Declined;
        self.arm(
            TimerKind::CallbackReoffer,
            now + self.flow.timers.callback_reoffer_interval,
            out,
        );
    }

    fn callback_request(&self, automatic: bool) -> Action {
        Action::StoreCallback(Box::new(CallbackRequest {
            number: self.context.caller_id.clone(),
            when: self
                .callback_when
                .clone()
                .map_or(CallbackWhen::Asap, CallbackWhen::Requested),
            reason: self.route_reason.unwrap_or(RouteReason::Keyword),
            context: self.context.clone(),
            automatic,
        }))
    }

    fn probe(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.media = CallerMedia::Probing;
        out.push(Action::ProbeCaller);
        self.arm(
            TimerKind::MediaProbe,
            now + self.flow.timers.probe_answer,
            out,
        );
    }

    /// Neither media nor signalling: the caller is gone, though no BYE came.
    fn dropped(&mut self, out: &mut Vec<Action>) {
        // They asked for a person and their line died: call them back unasked.
        if self.phase == Phase::Queued
            && self.callback != CallbackState::Stored
            && self.callback != CallbackState::Storing
            && self.context.caller_id.is_some()
        {
            out.push(self.callback_request(true));
        }
        self.end(out);
    }

    /// After every event: a caller waiting in line hears a prompt or the hold music, never
    /// dead air. Except while their callback is being committed (milliseconds): nothing at
    /// all is heard then, so nothing can be taken for a confirmation before it is stored.
    fn settle(&mut self, out: &mut Vec<Action>) {
        if self.phase == Phase::Queued
            && self.playing.is_none()
            && self.holding.is_none()
            && self.callback != CallbackState::Storing
        {
            let play = PlayId(self.next_play);
            self.next_play += 1;
            self.holding = Some(play);
            out.push(Action::PlayHold { play });
        }
    }

    fn play(&mut self, prompt: &str, vars: &[(&str, String)], out: &mut Vec<Action>) {
        let lang = self.lang();
        // Validation guarantees every prompt the brain names exists; if one is missing anyway,
        // stay silent rather than fail the call.
        let Some(p) = lang.prompts.get(prompt) else {
            return;
        };
        let action = Action::Play {
            play: PlayId(self.next_play),
            prompt: prompt.to_string(),
            text: render(&p.text, vars),
            audio: p.audio.clone(),
            barge_in: p.barge_in,
            language: lang.code.clone(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        };
        self.playing = Some((PlayId(self.next_play), prompt.to_string(), p.barge_in));
        // A play replaces whatever plays, hold music too.
        self.holding = None;
        self.next_play += 1;
        out.push(action);
    }

    fn stop_playing(&mut self, out: &mut Vec<Action>) {
        let holding = self.holding.take().is_some();
        if self.playing.take().is_some() || holding {
            out.push(Action::StopPlayback);
        }
    }

    fn arm(&mut self, timer: TimerKind, at: Instant, out: &mut Vec<Action>) {
        self.timers[timer as usize] = Some(at);
        out.push(Action::SetTimer { timer, at });
    }

    fn cancel(&mut self, timer: TimerKind, out: &mut Vec<Action>) {
        if self.timers[timer as usize].take().is_some() {
            out.push(Action::CancelTimer { timer });
        }
    }

    fn end(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Ended;
        for t in TimerKind::ALL {
            self.cancel(t, out);
        }
        self.playing = None;
        self.holding = None;
        self.ringing = None;
    }
}
