//! The state of `vmscope top`, pure: the last two samples and the rates
//! between them, the sort order, the filter, grouping by owner, the
//! selection and which screen is up. No terminal, no IO, no clock: the
//! drawing (`super::view`), the batch writer (`super::batch`) and the tests
//! read it; the data source (`super::source`) and the key reader feed it.
//!
//! Rates: per second between two samples with different snapshot times
//! (a second read of the same agent snapshot changes nothing, so a refresh
//! faster than the agent's interval never shows zeros). A counter that went
//! down was reset (the hypervisor process restarted under the same VM id):
//! it counts from zero, as Prometheus' `rate()` does. A VM new since the
//! previous sample has no rates yet (`-`); a VM that left is gone from the
//! next sample on, and from its owner's totals.

use std::cmp::Ordering;

use super::sample::{Alert, HostSample, Sample, VmSample};

/// A table column; the order here is the order on screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Name,
    Owner,
    State,
    Vcpus,
    Cpu,
    Guest,
    Steal,
    Mem,
    NetRx,
    NetTx,
    DiskRead,
    DiskWrite,
    Uptime,
    Time,
}

impl Column {
    pub const ALL: [Column; 14] = [
        Column::Name,
        Column::Owner,
        Column::State,
        Column::Vcpus,
        Column::Cpu,
        Column::Guest,
        Column::Steal,
        Column::Mem,
        Column::NetRx,
        Column::NetTx,
        Column::DiskRead,
        Column::DiskWrite,
        Column::Uptime,
        Column::Time,
    ];

    pub const fn title(self) -> &'static str {
        match self {
            Column::Name => "NAME",
            Column::Owner => "OWNER",
            Column::State => "STATE",
            Column::Vcpus => "VCPU",
            Column::Cpu => "CPU%",
            Column::Guest => "GUEST%",
            Column::Steal => "STEAL%",
            Column::Mem => "RSS/ALLOC",
            Column::NetRx => "RX/s",
            Column::NetTx => "TX/s",
            Column::DiskRead => "RD/s",
            Column::DiskWrite => "WR/s",
            Column::Uptime => "UPTIME",
            Column::Time => "TIME",
        }
    }

    /// What the sort menu (`F`) says about the column.
    pub const fn describe(self) -> &'static str {
        match self {
            Column::Name => "VM name",
            Column::Owner => "owner (user/project)",
            Column::State => "run state",
            Column::Vcpus => "allocated vCPUs",
            Column::Cpu => "host CPU in use, % of one core (P)",
            Column::Guest => "guest code, % of the VM's vCPUs",
            Column::Steal => "vCPU run-queue wait (steal), % of the VM's vCPUs",
            Column::Mem => "resident memory (M)",
            Column::NetRx => "network received per second",
            Column::NetTx => "network sent per second",
            Column::DiskRead => "disk read per second",
            Column::DiskWrite => "disk written per second",
            Column::Uptime => "time since the hypervisor process started",
            Column::Time => "CPU time used since start (T)",
        }
    }

    /// Text columns sort A-Z first; figures largest first.
    const fn descending_by_default(self) -> bool {
        !matches!(self, Column::Name | Column::Owner | Column::State)
    }
}

/// Per-second rates of one VM between two samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    /// Host cores busy in the hypervisor process (1.0 = one core).
    pub cpu_cores: f64,
    /// Cores running guest code (KVM only).
    pub guest_cores: Option<f64>,
    /// Summed vCPU run-queue wait, in cores.
    pub steal_cores: Option<f64>,
    pub net_rx: f64,
    pub net_tx: f64,
    pub disk_read: Option<f64>,
    pub disk_write: Option<f64>,
    pub vcpus: Vec<VcpuRate>,
    pub taps: Vec<TapRate>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct VcpuRate {
    pub index: u32,
    /// Share of a host core the vCPU thread ran (0..1).
    pub run: f64,
    /// Share of the interval it waited for a host core (steal).
    pub wait: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TapRate {
    pub interface: String,
    pub rx: f64,
    pub tx: f64,
}

/// The growth of a counter between two reads; a counter that went down was
/// reset and counts from zero.
pub fn increase(prev: f64, cur: f64) -> f64 {
    if cur >= prev {
        cur - prev
    } else {
        cur.max(0.0)
    }
}

fn increase_u(prev: u64, cur: u64) -> f64 {
    if cur >= prev {
        (cur - prev) as f64
    } else {
        cur as f64
    }
}

/// Rates of `cur` since `prev` over `dt` seconds (`dt` > 0). A different
/// process start time is a new incarnation: every counter counts from zero.
pub fn rates(prev: &VmSample, cur: &VmSample, dt: f64) -> Rates {
    let restarted = prev.start_time_seconds != cur.start_time_seconds;
    let f = |p: f64, c: f64| {
        if restarted {
            c.max(0.0) / dt
        } else {
            increase(p, c) / dt
        }
    };
    let u = |p: u64, c: u64| {
        if restarted {
            c as f64 / dt
        } else {
            increase_u(p, c) / dt
        }
    };
    let vcpus: Vec<VcpuRate> = cur
        .vcpus
        .iter()
        .filter_map(|c| {
            let p = prev.vcpus.iter().find(|p| p.index == c.index)?;
            Some(VcpuRate {
                index: c.index,
                run: f(p.cpu_seconds, c.cpu_seconds),
                wait: match (p.wait_seconds, c.wait_seconds) {
                    (Some(a), Some(b)) => Some(f(a, b)),
                    _ => None,
                },
            })
        })
        .collect();
    let taps: Vec<TapRate> = cur
        .taps
        .iter()
        .filter_map(|t| {
            let p = prev.taps.iter().find(|p| p.interface == t.interface)?;
            Some(TapRate {
                interface: t.interface.clone(),
                rx: u(p.rx_bytes, t.rx_bytes),
                tx: u(p.tx_bytes, t.tx_bytes),
            })
        })
        .collect();
    let waits: Vec<f64> = vcpus.iter().filter_map(|v| v.wait).collect();
    Rates {
        cpu_cores: f(prev.cpu_seconds, cur.cpu_seconds),
        guest_cores: match (prev.guest_seconds, cur.guest_seconds) {
            (Some(a), Some(b)) => Some(f(a, b)),
            _ => None,
        },
        steal_cores: (!waits.is_empty()).then(|| waits.iter().fold(0.0, |a, w| a + w)),
        net_rx: taps.iter().fold(0.0, |a, t| a + t.rx),
        net_tx: taps.iter().fold(0.0, |a, t| a + t.tx),
        disk_read: match (prev.disk_read_bytes, cur.disk_read_bytes) {
            (Some(a), Some(b)) => Some(u(a, b)),
            _ => None,
        },
        disk_write: match (prev.disk_write_bytes, cur.disk_write_bytes) {
            (Some(a), Some(b)) => Some(u(a, b)),
            _ => None,
        },
        vcpus,
        taps,
    }
}

/// One table row: a VM, or (grouped) an owner's totals. The same shape for
/// both so that sorting, drawing and batch output have one path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Line {
    /// The VM id, or the owner (grouped): what the selection follows.
    pub key: String,
    pub name: String,
    pub owner: String,
    /// A VM's state; for an owner, `N running` style counts.
    pub state: String,
    /// VMs in the row (1 for a VM).
    pub vms: usize,
    pub vcpus: Option<u32>,
    /// Host CPU, % of one core.
    pub cpu_pct: Option<f64>,
    /// Guest code and run-queue wait, % of the row's vCPUs.
    pub guest_pct: Option<f64>,
    pub steal_pct: Option<f64>,
    pub rss_bytes: u64,
    pub allocated_bytes: Option<u64>,
    pub net_rx: Option<f64>,
    pub net_tx: Option<f64>,
    pub disk_read: Option<f64>,
    pub disk_write: Option<f64>,
    pub uptime_seconds: Option<f64>,
    pub cpu_seconds: f64,
}

impl Line {
    fn of(vm: &VmSample, r: Option<&Rates>, at: f64) -> Line {
        let per_vcpu = |cores: Option<f64>| {
            let n = f64::from(vm.vcpus_allocated?);
            (n > 0.0).then(|| cores.map(|c| c / n * 100.0)).flatten()
        };
        Line {
            key: vm.id.clone(),
            name: vm.name.clone(),
            owner: vm.owner(),
            state: vm.state.clone(),
            vms: 1,
            vcpus: vm.vcpus_allocated,
            cpu_pct: r.map(|r| r.cpu_cores * 100.0),
            guest_pct: per_vcpu(r.and_then(|r| r.guest_cores)),
            steal_pct: per_vcpu(r.and_then(|r| r.steal_cores)),
            rss_bytes: vm.memory_rss_bytes,
            allocated_bytes: vm.memory_allocated_bytes,
            net_rx: r.map(|r| r.net_rx),
            net_tx: r.map(|r| r.net_tx),
            disk_read: r.and_then(|r| r.disk_read),
            disk_write: r.and_then(|r| r.disk_write),
            uptime_seconds: (vm.start_time_seconds > 0.0)
                .then(|| (at - vm.start_time_seconds).max(0.0)),
            cpu_seconds: vm.cpu_seconds,
        }
    }

    fn cmp_by(&self, other: &Line, c: Column) -> Ordering {
        fn opt(a: Option<f64>, b: Option<f64>) -> Ordering {
            // Unknown sorts below every figure.
            match (a, b) {
                (Some(a), Some(b)) => a.total_cmp(&b),
                (Some(_), None) => Ordering::Greater,
                (None, Some(_)) => Ordering::Less,
                (None, None) => Ordering::Equal,
            }
        }
        match c {
            Column::Name => self.name.cmp(&other.name),
            Column::Owner => self.owner.cmp(&other.owner),
            Column::State => self.state.cmp(&other.state),
            Column::Vcpus => self.vcpus.cmp(&other.vcpus),
            Column::Cpu => opt(self.cpu_pct, other.cpu_pct),
            Column::Guest => opt(self.guest_pct, other.guest_pct),
            Column::Steal => opt(self.steal_pct, other.steal_pct),
            Column::Mem => self.rss_bytes.cmp(&other.rss_bytes),
            Column::NetRx => opt(self.net_rx, other.net_rx),
            Column::NetTx => opt(self.net_tx, other.net_tx),
            Column::DiskRead => opt(self.disk_read, other.disk_read),
            Column::DiskWrite => opt(self.disk_write, other.disk_write),
            Column::Uptime => opt(self.uptime_seconds, other.uptime_seconds),
            Column::Time => self.cpu_seconds.total_cmp(&other.cpu_seconds),
        }
    }
}

/// Which rows the filter keeps: a case-insensitive regular expression
/// matched against the name and id (`name:RE`), the owner (`owner:RE`), or
/// any of them (plain `RE`; a plain word is a substring match).
#[derive(Debug, Clone)]
pub struct Filter {
    pub text: String,
    field: Field,
    re: regex::Regex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Any,
    Name,
    Owner,
}

impl Filter {
    /// An error names the problem in one line, for the status line.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let (field, pattern) = if let Some(p) = text.strip_prefix("name:") {
            (Field::Name, p)
        } else if let Some(p) = text.strip_prefix("owner:") {
            (Field::Owner, p)
        } else {
            (Field::Any, text)
        };
        let re = regex::RegexBuilder::new(pattern)
            .case_insensitive(true)
            // A filter typed at a prompt: keep a pathological one small.
            .size_limit(1 << 20)
            .build()
            .map_err(|e| {
                let why = e.to_string();
                let why = why
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("invalid")
                    .trim()
                    .trim_start_matches("error: ");
                format!("filter {text:?}: not a valid regular expression: {why}")
            })?;
        Ok(Filter {
            text: text.to_owned(),
            field,
            re,
        })
    }

    fn keeps(&self, vm: &VmSample) -> bool {
        let name = || self.re.is_match(&vm.name) || self.re.is_match(&vm.id);
        let owner = || self.re.is_match(&vm.owner());
        match self.field {
            Field::Any => name() || owner(),
            Field::Name => name(),
            Field::Owner => owner(),
        }
    }
}

/// What a key does. The terminal layer turns its events into these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    /// Ctrl-C: quit from anywhere.
    Interrupt,
}

/// Which screen is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screen {
    List,
    /// One VM, by id.
    Detail(String),
    /// The sort menu (`F`), with the highlighted column.
    SortMenu(usize),
    /// Typing a filter after `/`.
    FilterInput(String),
}

/// After a key: keep going or quit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

/// Rows a page key moves the selection by.
const PAGE: usize = 10;

/// Everything the screen shows, and the user's choices.
#[derive(Debug)]
pub struct Model {
    prev: Option<Sample>,
    cur: Option<Sample>,
    /// Rates per VM of `cur`, in `cur.vms` order (`None`: no rates yet).
    rates: Vec<Option<Rates>>,
    pub sort: Column,
    pub descending: bool,
    pub filter: Option<Filter>,
    pub grouped: bool,
    /// The selected row's key (VM id or owner).
    pub selected: Option<String>,
    pub screen: Screen,
    /// The last read failed: why (shown in the header until a read works).
    pub source_error: Option<String>,
    /// A one-line note for the user (a bad filter, ...), cleared by the next key.
    pub message: Option<String>,
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

impl Model {
    pub fn new() -> Model {
        Model {
            prev: None,
            cur: None,
            rates: Vec::new(),
            sort: Column::Cpu,
            descending: true,
            filter: None,
            grouped: false,
            selected: None,
            screen: Screen::List,
            source_error: None,
            message: None,
        }
    }

    /// A new read. One of the same snapshot as the current one (an agent
    /// slower than top's refresh) only refreshes the alerts.
    pub fn update(&mut self, sample: Sample) {
        self.source_error = None;
        if let Some(cur) = &mut self.cur
            && sample.at <= cur.at
        {
            cur.alerts = sample.alerts;
            return;
        }
        let dt = self.cur.as_ref().map(|c| sample.at - c.at);
        self.rates = sample
            .vms
            .iter()
            .map(|vm| {
                let dt = dt.filter(|d| *d > 0.0)?;
                let prev = self.cur.as_ref()?;
                let i = prev.vms.binary_search_by(|p| p.id.cmp(&vm.id)).ok()?;
                Some(rates(prev.vms.get(i)?, vm, dt))
            })
            .collect();
        self.prev = self.cur.take();
        self.cur = Some(sample);
    }

    /// The read failed: the last figures stay, the header says why.
    pub fn failed(&mut self, why: String) {
        self.source_error = Some(why);
    }

    pub fn sample(&self) -> Option<&Sample> {
        self.cur.as_ref()
    }

    /// Seconds between the two samples the rates are from.
    pub fn window(&self) -> Option<f64> {
        Some(self.cur.as_ref()?.at - self.prev.as_ref()?.at)
    }

    pub fn host(&self) -> Option<&HostSample> {
        self.cur.as_ref()?.host.as_ref()
    }

    pub fn alerts(&self) -> Option<&[Alert]> {
        self.cur.as_ref()?.alerts.as_deref()
    }

    /// VMs by state (all VMs, not only the filtered ones), most first.
    pub fn state_counts(&self) -> Vec<(String, usize)> {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for vm in self.cur.iter().flat_map(|c| &c.vms) {
            match counts.iter_mut().find(|(s, _)| *s == vm.state) {
                Some((_, n)) => *n += 1,
                None => counts.push((vm.state.clone(), 1)),
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts
    }

    pub fn vm_count(&self) -> usize {
        self.cur.as_ref().map_or(0, |c| c.vms.len())
    }

    /// The VMs the filter keeps, one line each, unsorted.
    fn vm_lines(&self) -> Vec<Line> {
        let Some(cur) = &self.cur else {
            return Vec::new();
        };
        cur.vms
            .iter()
            .zip(self.rates.iter().chain(std::iter::repeat(&None)))
            .filter(|(vm, _)| self.filter.as_ref().is_none_or(|f| f.keeps(vm)))
            .map(|(vm, r)| Line::of(vm, r.as_ref(), cur.at))
            .collect()
    }

    /// The table's rows: filtered, grouped if asked, sorted.
    pub fn lines(&self) -> Vec<Line> {
        let mut lines = self.vm_lines();
        if self.grouped {
            lines = group(lines);
        }
        let (col, desc) = (self.sort, self.descending);
        lines.sort_by(|a, b| {
            let o = a.cmp_by(b, col);
            let o = if desc { o.reverse() } else { o };
            // Ties in a stable, readable order.
            o.then_with(|| a.name.cmp(&b.name))
                .then_with(|| a.key.cmp(&b.key))
        });
        lines
    }

    /// The selected row's index in `lines` (the first row when the
    /// selection is gone or unset).
    pub fn selected_index(&self, lines: &[Line]) -> Option<usize> {
        if lines.is_empty() {
            return None;
        }
        Some(
            self.selected
                .as_ref()
                .and_then(|k| lines.iter().position(|l| &l.key == k))
                .unwrap_or(0),
        )
    }

    /// One VM's figures for the detail screen.
    pub fn vm(&self, id: &str) -> Option<(&VmSample, Option<&Rates>)> {
        let cur = self.cur.as_ref()?;
        let i = cur.vms.binary_search_by(|v| v.id.as_str().cmp(id)).ok()?;
        Some((cur.vms.get(i)?, self.rates.get(i).and_then(Option::as_ref)))
    }

    /// The firing alerts about one VM.
    pub fn vm_alerts(&self, id: &str) -> Vec<&Alert> {
        let scope = format!("vm:{id}");
        self.alerts()
            .unwrap_or_default()
            .iter()
            .filter(|a| a.scope == scope)
            .collect()
    }

    /// Sort by `c`; the same column again reverses the order.
    pub fn sort_by(&mut self, c: Column) {
        if self.sort == c {
            self.descending = !self.descending;
        } else {
            self.sort = c;
            self.descending = c.descending_by_default();
        }
    }

    fn sort_step(&mut self, forward: bool) {
        let n = Column::ALL.len();
        let i = Column::ALL
            .iter()
            .position(|c| *c == self.sort)
            .unwrap_or(0);
        let next = if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        };
        if let Some(c) = Column::ALL.get(next) {
            self.sort = *c;
            self.descending = c.descending_by_default();
        }
    }

    /// Sets the filter from what was typed (empty: no filter). A bad
    /// expression keeps the previous filter and says why.
    pub fn set_filter(&mut self, text: &str) {
        if text.is_empty() {
            self.filter = None;
            return;
        }
        match Filter::parse(text) {
            Ok(f) => self.filter = Some(f),
            Err(e) => self.message = Some(e),
        }
    }

    fn move_selection(&mut self, by: isize) {
        let lines = self.lines();
        let Some(i) = self.selected_index(&lines) else {
            return;
        };
        let last = lines.len() - 1;
        let j = if by < 0 {
            i.saturating_sub(by.unsigned_abs())
        } else {
            (i + by.unsigned_abs()).min(last)
        };
        self.selected = lines.get(j).map(|l| l.key.clone());
    }

    /// One key press.
    pub fn key(&mut self, k: Key) -> Flow {
        if k == Key::Interrupt {
            return Flow::Quit;
        }
        self.message = None;
        match self.screen.clone() {
            Screen::FilterInput(mut text) => {
                match k {
                    Key::Enter => {
                        self.screen = Screen::List;
                        self.set_filter(&text);
                    }
                    Key::Esc => self.screen = Screen::List,
                    Key::Backspace => {
                        text.pop();
                        self.screen = Screen::FilterInput(text);
                    }
                    Key::Char(c) if !c.is_control() && text.chars().count() < 200 => {
                        text.push(c);
                        self.screen = Screen::FilterInput(text);
                    }
                    _ => {}
                }
                Flow::Continue
            }
            Screen::SortMenu(i) => {
                let n = Column::ALL.len();
                match k {
                    Key::Up => self.screen = Screen::SortMenu((i + n - 1) % n),
                    Key::Down => self.screen = Screen::SortMenu((i + 1) % n),
                    Key::Enter => {
                        if let Some(c) = Column::ALL.get(i) {
                            self.sort = *c;
                            self.descending = c.descending_by_default();
                        }
                        self.screen = Screen::List;
                    }
                    Key::Esc | Key::Char('F' | 'f') => self.screen = Screen::List,
                    Key::Char('q') => return Flow::Quit,
                    _ => {}
                }
                Flow::Continue
            }
            Screen::Detail(_) => {
                match k {
                    Key::Esc | Key::Enter | Key::Backspace => self.screen = Screen::List,
                    Key::Char('q') => return Flow::Quit,
                    _ => {}
                }
                Flow::Continue
            }
            Screen::List => self.list_key(k),
        }
    }

    fn list_key(&mut self, k: Key) -> Flow {
        match k {
            Key::Char('q') => return Flow::Quit,
            Key::Char('P') => self.sort_by(Column::Cpu),
            Key::Char('M') => self.sort_by(Column::Mem),
            Key::Char('N') => self.sort_by(Column::Name),
            Key::Char('T') => self.sort_by(Column::Time),
            Key::Char('R') => self.descending = !self.descending,
            Key::Char('<') => self.sort_step(false),
            Key::Char('>') => self.sort_step(true),
            Key::Char('F' | 'f') => {
                let i = Column::ALL
                    .iter()
                    .position(|c| *c == self.sort)
                    .unwrap_or(0);
                self.screen = Screen::SortMenu(i);
            }
            Key::Char('/') => {
                let text = self
                    .filter
                    .as_ref()
                    .map(|f| f.text.clone())
                    .unwrap_or_default();
                self.screen = Screen::FilterInput(text);
            }
            Key::Char('g') => {
                self.grouped = !self.grouped;
                self.selected = None;
            }
            Key::Esc => {
                // Back out of a filter, then of grouping.
                if self.filter.is_some() {
                    self.filter = None;
                } else {
                    self.grouped = false;
                }
            }
            Key::Up | Key::Char('k') => self.move_selection(-1),
            Key::Down | Key::Char('j') => self.move_selection(1),
            Key::PageUp => self.move_selection(-(PAGE as isize)),
            Key::PageDown => self.move_selection(PAGE as isize),
            Key::Home => self.move_selection(isize::MIN / 2),
            Key::End => self.move_selection(isize::MAX / 2),
            Key::Enter => {
                let lines = self.lines();
                let Some(line) = self.selected_index(&lines).and_then(|i| lines.get(i)) else {
                    return Flow::Continue;
                };
                if self.grouped {
                    // An owner's row opens its VMs.
                    let owner = regex::escape(&line.owner);
                    self.grouped = false;
                    self.selected = None;
                    self.set_filter(&format!("owner:^{owner}$"));
                } else {
                    self.selected = Some(line.key.clone());
                    self.screen = Screen::Detail(line.key.clone());
                }
            }
            _ => {}
        }
        Flow::Continue
    }
}

/// Per-owner totals of `lines`: sums of figures, CPU shares over the
/// owner's vCPUs, a rate only where every VM has it.
pub fn group(lines: Vec<Line>) -> Vec<Line> {
    let mut groups: Vec<(Line, f64, f64, f64, bool, bool, usize)> = Vec::new();
    for l in lines {
        let i = match groups.iter().position(|g| g.0.owner == l.owner) {
            Some(i) => i,
            None => {
                groups.push((
                    Line {
                        key: l.owner.clone(),
                        name: l.owner.clone(),
                        owner: l.owner.clone(),
                        vcpus: Some(0),
                        cpu_pct: Some(0.0),
                        allocated_bytes: Some(0),
                        net_rx: Some(0.0),
                        net_tx: Some(0.0),
                        disk_read: Some(0.0),
                        disk_write: Some(0.0),
                        vms: 0,
                        ..Line::default()
                    },
                    0.0,
                    0.0,
                    0.0,
                    false,
                    false,
                    0,
                ));
                groups.len() - 1
            }
        };
        let Some((g, guest, steal, vcpus_known, has_guest, has_steal, running)) = groups.get_mut(i)
        else {
            continue;
        };
        fn add(a: &mut Option<f64>, b: Option<f64>) {
            *a = match (*a, b) {
                (Some(x), Some(y)) => Some(x + y),
                _ => None,
            };
        }
        g.vms += 1;
        if l.state == "running" {
            *running += 1;
        }
        g.vcpus = match (g.vcpus, l.vcpus) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            _ => None,
        };
        add(&mut g.cpu_pct, l.cpu_pct);
        if let Some(v) = l.vcpus.map(f64::from) {
            if let Some(p) = l.guest_pct {
                *guest += p * v;
                *has_guest = true;
            }
            if let Some(p) = l.steal_pct {
                *steal += p * v;
                *has_steal = true;
            }
            *vcpus_known += v;
        }
        g.rss_bytes = g.rss_bytes.saturating_add(l.rss_bytes);
        g.allocated_bytes = match (g.allocated_bytes, l.allocated_bytes) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            _ => None,
        };
        add(&mut g.net_rx, l.net_rx);
        add(&mut g.net_tx, l.net_tx);
        add(&mut g.disk_read, l.disk_read);
        add(&mut g.disk_write, l.disk_write);
        g.uptime_seconds = match (g.uptime_seconds, l.uptime_seconds) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        g.cpu_seconds += l.cpu_seconds;
    }
    groups
        .into_iter()
        .map(
            |(mut g, guest, steal, vcpus, has_guest, has_steal, running)| {
                if vcpus > 0.0 {
                    g.guest_pct = has_guest.then_some(guest / vcpus);
                    g.steal_pct = has_steal.then_some(steal / vcpus);
                }
                g.state = format!("{running}/{} run", g.vms);
                g
            },
        )
        .collect()
}
