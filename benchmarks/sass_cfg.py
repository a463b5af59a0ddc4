"""Control flow of a SASS listing (``cuobjdump --dump-sass``): basic blocks, natural loops, and the
instructions one pass through each part of a kernel issues. ``static_check.py`` combines these
with a trip-count model into instructions per element. Pure Python: no GPU, no CUDA toolkit.

* ``parse_listing(text)`` -> ``{function: [Instr]}``, branch targets resolved whether the listing
  gives addresses (``BRA 0x1d0``) or labels (``BRA `(.L_x_3)``, ``.L_x_3:`` lines);
  ``split_raw(text, starts)`` the same for one ``nvdisasm -b`` listing of many functions laid end
  to end (``elf_texts(cubin)`` gives each function's machine code).
* ``constant_tables(elf_text)`` -> ``{function: [words]}`` of ``.nv.constant2`` from
  ``cuobjdump --dump-elf``: the jump tables of ``BRX`` (a ``switch``).
* ``analyse(instrs, table, cold)`` -> ``Cost``: the straight-line code (outside every loop) and,
  per loop, the instructions of one iteration that belong to no inner loop.

Blocks start at the entry, at every branch target and after every branch, ``EXIT``, ``RET`` or
trap. A guarded branch (``@P0 BRA``, ``BRA.U !UP0, ...``, ``BRA.DIV``) has two successors, an
unguarded one (or ``@PT``) one, ``@!PT BRA`` only its fall-through; a guarded ``EXIT`` falls
through. ``BRX`` jumps to the entries of its table (the ``LDC Rx, c[0x2][Ry+off]`` feeding it picks
the table's start; it ends where the next table starts). ``BSSY``/``BSYNC``/``WARPSYNC``/``BAR`` are
ordinary instructions: they issue and are counted, as do predicated-off ones (``@!PT``, ``@P0`` when
P0 is false). Only blocks reachable from the entry count, so
the ``BRA``-to-itself and ``NOP`` padding after the last ``EXIT`` never do. A ``CALL`` adds its
callee's longest path (up to ``RET``, once through any loop in it) to its block.

Loops are the natural loops of the back edges (edges to a block that dominates their source);
loops sharing a header are one loop, and a loop inside another is its child. A block belongs to
its innermost loop. One iteration of a loop is a path from its header to a block with a back edge,
each child loop collapsed to a node of cost 0 (a child's iterations are counted separately, times
its own trip count); the straight-line code is a path from the entry to an ``EXIT``, top-level
loops collapsed likewise. Where branches give several paths, ``Path`` holds the longest and the
shortest, so a caller can tell an exact count from a bound. Both avoid cold blocks where another
path exists: blocks with a ``CALL`` (the slow paths of division and 64-bit integer division, for
denormal or huge operands, which the main case does not take), and blocks with an instruction the
caller's ``cold`` predicate flags (e.g. the scalar loads of a kernel's unaligned tail). Branches are
taken as uniform over the warp (a divergent branch issues both sides; a path counts one).
"""
from __future__ import annotations

import re
import struct
from collections import Counter
from dataclasses import dataclass, field

_INSTR = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(@!?U?P(?:T|\d+)\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)([^;]*);")
_LABEL = re.compile(r"^\s*([.$\w]+):\s*$")
_TARGET = re.compile(r"`\(([^)]+)\)|(?<![\w.+\-])(0x[0-9a-fA-F]+)\s*$")
_PRED_OPERAND = re.compile(r"^\s*(!?U?P(?:T|\d+))\s*,")
_CONST2 = re.compile(r"^\s*LDC(?:\.\w+)*$")
_CONST2_OPERAND = re.compile(r"^(R\d+),\s*c\[0x2\]\[R\d+(?:\+(0x[0-9a-fA-F]+))?\]")
_TERMINATORS = ("EXIT", "RET", "KILL", "BPT")
_BRANCHES = ("BRA", "JMP")
_INDIRECT = ("BRX", "JMX")
MUFU = "MUFU"


@dataclass(frozen=True)
class Instr:
    addr: int
    op: str            # with its modifiers: "MUFU.EX2", "LDG.E.128"
    operands: str = ""
    guard: str = ""    # "@P0", "@!UP1", "" when unguarded
    target: str = ""   # branch / call target as "0x1d0"

    @property
    def base(self):
        return self.op.split(".", 1)[0]

    @property
    def always(self):
        """Executes for every thread (no guard, or @PT)."""
        return self.guard in ("", "@PT", "@UPT")

    @property
    def never(self):
        return self.guard in ("@!PT", "@!UPT")


def parse_listing(text):
    """{function name: [Instr]} for every ``Function :`` section of a cuobjdump listing."""
    parts = re.split(r"^\s*Function : (\S+)\s*$", text, flags=re.M)
    return {name: parse_function(body) for name, body in zip(parts[1::2], parts[2::2])}


def parse_function(text):
    """The instructions of one function, branch targets as addresses (labels resolved)."""
    instrs, labels, pending = [], {}, []
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m:
            addr = int(m.group(1), 16)
            for label in pending:
                labels[label] = addr
            pending = []
            operands = m.group(4).strip()
            t = _TARGET.search(operands)
            target = (t.group(1) or t.group(2)) if t else ""
            instrs.append(Instr(addr, m.group(3), operands, (m.group(2) or "").strip(), target))
            continue
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
    out = []
    for ins in instrs:
        target = ins.target
        if target and not target.startswith("0x"):
            target = hex(labels[target]) if target in labels else ""
        out.append(Instr(ins.addr, ins.op, ins.operands, ins.guard, target))
    return out


def split_raw(text, starts):
    """Functions of one ``nvdisasm -b SMxx`` listing of several ``.text`` sections laid end to end,
    beginning at byte offsets ``starts``: one [Instr] each, addresses and targets rebased to 0."""
    bounds = list(starts) + [float("inf")]
    out = [[] for _ in starts]
    k = 0
    for ins in parse_function(text):
        while ins.addr >= bounds[k + 1]:
            k += 1
        base = bounds[k]
        target = hex(int(ins.target, 16) - base) if ins.target else ""
        out[k].append(Instr(ins.addr - base, ins.op, ins.operands, ins.guard, target))
    return out


def elf_texts(data):
    """{function: machine code} of the ``.text.<function>`` sections of a cubin (ELF64)."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    entsize, count, strndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * entsize) for i in range(count)]
    names = sections[strndx][4]
    out = {}
    for name, _, _, _, offset, size in sections:
        label = data[names + name:data.index(b"\0", names + name)].decode()
        if label.startswith(".text."):
            out[label[len(".text."):]] = data[offset:offset + size]
    return out


def constant_tables(elf_text):
    """{function: [32-bit words]} of each ``.nv.constant2.<function>`` section in a
    ``cuobjdump --dump-elf`` listing (where nvcc puts ``BRX`` jump tables)."""
    out = {}
    for m in re.finditer(r"^\.nv\.constant2\.(\S+)\s*\n((?:\s*0x[0-9a-fA-F]+)+)", elf_text, flags=re.M):
        out[m.group(1)] = [int(w, 16) for w in m.group(2).split()]
    return out


@dataclass(frozen=True)
class Path:
    """Instructions issued along the longest and the shortest path, MUFU along each, and the cold
    blocks (calls included) the longest could not avoid."""
    max: int = 0
    min: int = 0
    mufu: int = 0
    mufu_min: int = 0
    cold: int = 0

    @property
    def exact(self):
        return self.max == self.min


@dataclass
class Loop:
    header: int                      # address of the header block
    blocks: frozenset                # block start addresses, child loops included
    parent: int | None = None        # index of the enclosing loop in Cost.loops
    children: list = field(default_factory=list)
    own: Path = Path()               # one iteration, child loops excluded
    ops: Counter = field(default_factory=Counter)   # opcodes of the loop's own blocks, all paths


@dataclass
class Cost:
    straight: Path
    loops: list                      # Loop, by header address
    problems: list = field(default_factory=list)

    def top_loops(self):
        return [lp for lp in self.loops if lp.parent is None]


def _brx_targets(instrs, i, table, by_addr):
    """Entries of the jump table a BRX at instrs[i] reads, or None if not found."""
    reg = instrs[i].operands.split()[0] if instrs[i].operands else ""
    starts = sorted({int(m.group(2) or "0", 16) // 4 for ins in instrs if _CONST2.match(ins.op)
                     for m in [_CONST2_OPERAND.match(ins.operands)] if m})
    for j in range(i - 1, max(-1, i - 12), -1):
        m = _CONST2_OPERAND.match(instrs[j].operands)
        if _CONST2.match(instrs[j].op) and m and m.group(1) == reg:
            first = int(m.group(2) or "0", 16) // 4
            later = [s for s in starts if s > first]
            words = table[first:later[0] if later else len(table)]
            return sorted({w for w in words if w in by_addr}) or None
    return None


class _Graph:
    def __init__(self, instrs, table):
        self.problems = []
        by_addr = {ins.addr: i for i, ins in enumerate(instrs)}
        self.jumps = {}
        for i, ins in enumerate(instrs):
            if ins.base in _INDIRECT and not ins.never:
                targets = _brx_targets(instrs, i, table or [], by_addr)
                if targets is None:
                    self.problems.append(f"indirect branch at {ins.addr:#x}: jump table not found, targets not followed")
                self.jumps[ins.addr] = targets or []
        leaders = {instrs[0].addr}
        for i, ins in enumerate(instrs):
            if ins.never:
                continue
            if ins.base in _BRANCHES + ("CALL",) and ins.target:
                if int(ins.target, 16) in by_addr:
                    leaders.add(int(ins.target, 16))
                else:
                    self.problems.append(f"{ins.base} at {ins.addr:#x} to {ins.target}: not an instruction")
            leaders.update(self.jumps.get(ins.addr, ()))
            if ins.base in _BRANCHES + _TERMINATORS + _INDIRECT and i + 1 < len(instrs):
                leaders.add(instrs[i + 1].addr)
        self.order = sorted(leaders)
        self.blocks = {}
        for k, start in enumerate(self.order):
            end = self.order[k + 1] if k + 1 < len(self.order) else None
            self.blocks[start] = [ins for ins in instrs[by_addr[start]:] if end is None or ins.addr < end]
        self.succ = {b: self._successors(k, b) for k, b in enumerate(self.order)}

    def _successors(self, k, start):
        last = self.blocks[start][-1]
        nxt = [self.order[k + 1]] if k + 1 < len(self.order) else []
        if last.never:
            return nxt
        if last.base in _TERMINATORS:
            return [] if last.always else nxt
        if last.base in _INDIRECT:
            return list(self.jumps[last.addr]) + ([] if last.always else nxt)
        if last.base in _BRANCHES and last.target and int(last.target, 16) in self.blocks:
            target = int(last.target, 16)
            pred = _PRED_OPERAND.match(last.operands)
            conditional = (not last.always or ".DIV" in last.op or ".CONV" in last.op
                           or (pred is not None and pred.group(1) not in ("PT", "UPT")))
            return [target] + [n for n in nxt if n != target] if conditional else [target]
        return nxt


def _reachable(succ, entry):
    seen, stack = set(), [entry]
    while stack:
        b = stack.pop()
        if b not in seen:
            seen.add(b)
            stack.extend(succ[b])
    return seen


def _postorder(succ, entry):
    seen, out = {entry}, []
    stack = [(entry, iter(succ[entry]))]
    while stack:
        node, it = stack[-1]
        for s in it:
            if s not in seen:
                seen.add(s)
                stack.append((s, iter(succ[s])))
                break
        else:
            stack.pop()
            out.append(node)
    return out


def _dominators(succ, entry):
    """Immediate dominators (Cooper, Harvey and Kennedy's iteration) and predecessors."""
    post = _postorder(succ, entry)
    index = {b: i for i, b in enumerate(post)}
    preds = {b: [] for b in post}
    for b in post:
        for s in succ[b]:
            preds[s].append(b)
    idom = {entry: entry}
    changed = True
    while changed:
        changed = False
        for b in reversed(post):
            if b == entry:
                continue
            done = [p for p in preds[b] if p in idom]
            new = done[0]
            for p in done[1:]:
                a, c = p, new
                while a != c:
                    while index[a] < index[c]:
                        a = idom[a]
                    while index[c] < index[a]:
                        c = idom[c]
                new = a
            if idom.get(b) != new:
                idom[b] = new
                changed = True
    return idom, preds


def _dominates(idom, a, b):
    while a != b:
        if idom[b] == b:
            return False
        b = idom[b]
    return True


def _dag_paths(nodes, edges, weight, sources, sinks):
    """Path over an acyclic graph from a source to a sink: the longest and the shortest by
    instructions among those with the fewest cold blocks (weights are (cold, instructions, mufu)).
    None if the graph has a cycle."""
    indeg = Counter(v for u in nodes for v in edges.get(u, ()))
    ready = [u for u in nodes if indeg[u] == 0]
    topo = []
    while ready:
        u = ready.pop()
        topo.append(u)
        for v in edges.get(u, ()):
            indeg[v] -= 1
            if indeg[v] == 0:
                ready.append(v)
    if len(topo) != len(nodes):
        return None
    # keys: longest = max of (-cold, instr, mufu); shortest = min of (cold, instr, mufu)
    hi, lo = {}, {}
    for s in sources:
        c, n, m = weight(s)
        hi[s], lo[s] = (-c, n, m), (c, n, m)
    for u in topo:
        if u not in hi:
            continue
        for v in edges.get(u, ()):
            c, n, m = weight(v)
            a = (hi[u][0] - c, hi[u][1] + n, hi[u][2] + m)
            b = (lo[u][0] + c, lo[u][1] + n, lo[u][2] + m)
            hi[v] = max(hi[v], a) if v in hi else a
            lo[v] = min(lo[v], b) if v in lo else b
    ends = [s for s in sinks if s in hi]
    if not ends:
        return Path()
    h = max(hi[s] for s in ends)
    low = min(lo[s] for s in ends)
    return Path(h[1], low[1], h[2], low[2], -h[0])


def analyse(instrs, table=None, cold=None):
    """Cost of one function (see the module docstring); ``table``: its ``.nv.constant2`` words;
    ``cold(instr)``: True for instructions off the main path."""
    if not instrs:
        return Cost(Path(), [], ["no instructions"])
    g = _Graph(instrs, table)
    entry = instrs[0].addr
    live = _reachable(g.succ, entry)
    succ = {b: [s for s in g.succ[b] if s in live] for b in live}
    idom, preds = _dominators(succ, entry)
    problems = list(g.problems)
    bodies = {}
    for u in live:
        for h in succ[u]:
            if _dominates(idom, h, u):
                body = bodies.setdefault(h, {h})
                stack = [u]
                while stack:
                    b = stack.pop()
                    if b not in body:
                        body.add(b)
                        stack.extend(preds[b])
    loops = [Loop(h, frozenset(bodies[h])) for h in sorted(bodies)]
    for i, lp in enumerate(loops):
        outer = [j for j, other in enumerate(loops) if j != i and lp.blocks < other.blocks]
        if outer:
            lp.parent = min(outer, key=lambda j: len(loops[j].blocks))
            loops[lp.parent].children.append(i)
    innermost = {}
    for i in sorted(range(len(loops)), key=lambda i: -len(loops[i].blocks)):
        for b in loops[i].blocks:
            innermost[b] = i
    callee = _callee_costs(g)

    def weight(node):
        if isinstance(node, tuple):  # a collapsed child loop
            return 0, 0, 0
        live_ins = [ins for ins in g.blocks[node] if not ins.never]
        issued, mufu = len(g.blocks[node]), sum(ins.base == MUFU for ins in live_ins)  # @!PT issues too
        chill = int(bool(cold) and any(cold(ins) for ins in live_ins))
        for ins in live_ins:
            if ins.base == "CALL":
                chill = 1
                if ins.target in callee:
                    issued += callee[ins.target].max
                    mufu += callee[ins.target].mufu
        return chill, issued, mufu

    def rep_in(owner):
        """Node of a block in the region of loop ``owner`` (None: top level): the block, or the
        child loop holding it."""
        def rep(b):
            i = innermost.get(b)
            while i is not None and loops[i].parent != owner:
                i = loops[i].parent
            return b if i is None or i == owner else ("loop", i)
        return rep

    for i, lp in enumerate(loops):
        rep = rep_in(i)
        edges, latches = {}, set()
        for u in lp.blocks:
            for v in succ[u]:
                if v == lp.header:
                    latches.add(rep(u))
                elif v in lp.blocks and rep(u) != rep(v):
                    edges.setdefault(rep(u), set()).add(rep(v))
        lp.ops = Counter(ins.op for b in lp.blocks if innermost[b] == i for ins in g.blocks[b])
        path = _dag_paths({rep(b) for b in lp.blocks}, edges, weight, [lp.header], latches)
        if path is None:
            problems.append(f"loop at {lp.header:#x}: irreducible body, not counted")
        lp.own = path or Path()
    rep = rep_in(None)
    edges, sinks = {}, set()
    for u in live:
        if not succ[u]:
            sinks.add(rep(u))
        for v in succ[u]:
            if rep(u) != rep(v):
                edges.setdefault(rep(u), set()).add(rep(v))
    straight = _dag_paths({rep(b) for b in live}, edges, weight, [rep(entry)], sinks)
    if straight is None:
        problems.append("irreducible control flow: a cycle that is not a natural loop")
    return Cost(straight or Path(), loops, problems)


def _callee_costs(g):
    """{target: Path} of every CALL's callee: its longest path to a RET, back edges ignored (a loop
    in a callee, e.g. sm_80's division slow path, is counted once through: callees are cold)."""
    out = {}
    for block in g.blocks.values():
        for ins in block:
            if ins.base != "CALL" or ins.never or not ins.target or ins.target in out:
                continue
            start = int(ins.target, 16)
            if start not in g.blocks:
                continue
            region = _reachable(g.succ, start)
            edges = {b: {s for s in g.succ[b] if s > b} for b in region}
            sinks = {b for b in region if not g.succ[b]}
            out[ins.target] = _dag_paths(region, edges, lambda b: (0, len(g.blocks[b]),
                                                                    sum(i.base == MUFU for i in g.blocks[b])),
                                         [start], sinks) or Path()
    return out
