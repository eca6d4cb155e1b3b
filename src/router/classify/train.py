"""Fitting a task model: multinomial logistic regression over the classifier's features, numpy only.

``router train`` and ``scripts/train_classifier.py`` call :func:`train`; serving never imports this
module (numpy is needed here only: ``pip install 'router[train]'``).

>>> rows = [{"text": "SELECT * FROM t", "task": "sql"}, {"text": "hello there", "task": "chat"}] * 4
>>> model = train(rows, c=10.0, folds=0)                       # doctest: +SKIP
>>> model.classes                                               # doctest: +SKIP
('chat', 'sql')

The optimiser is a plain L-BFGS on the L2-regularised log loss (the same objective as
scikit-learn's ``LogisticRegression(C=c)``), with sparse products done by ``numpy.bincount``: no
BLAS call, so the same rows and options give the same weights, and the same model file, byte for
byte (on one machine and numpy version).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.classify.classifier import (
    CONTEXT_PREFIX,
    DEFAULT_CONVERSATION,
    DEFAULT_MODEL_PATH,
    MODEL_FORMAT,
    ConversationWeights,
    GramModel,
    conversation_parts,
    row_vector,
)
from router.classify.features import char_grams
from router.classify.lexicon import is_concept, members

__all__ = [
    "Fitted",
    "GramOptions",
    "Matrix",
    "TrainError",
    "fit",
    "group_folds",
    "leave_one_source_out",
    "shipped_model",
    "shipped_rows",
    "train",
    "vectorise",
    "write_model",
]


class TrainError(RuntimeError):
    """Training cannot run: numpy is missing, too few rows or classes."""


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:  # the serving install has no numpy
        raise TrainError("training a task model needs numpy: pip install 'router[train]' (or pip install numpy)") from exc
    return numpy


def _scipy_sparse() -> Any:
    try:
        from scipy import sparse
    except ImportError:
        return None
    return sparse


@dataclass
class Matrix:
    """Rows of sparse features: CSR arrays (row pointers, column indices, values).

    Products run in scipy.sparse when it is installed (about 5x faster), else in ``numpy.bincount``;
    both add the same terms in the same order (row by row, and column by column in row order).
    """

    indptr: Any
    indices: Any
    data: Any
    n_cols: int
    rows: Any = field(init=False)  # the row of each stored value
    _csr: Any = field(init=False, default=None)
    _csr_t: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        np = _numpy()
        self.rows = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        sparse = _scipy_sparse()
        if sparse is not None:
            self._csr = sparse.csr_matrix((self.data, self.indices, self.indptr), shape=(self.n_rows, self.n_cols))
            self._csr_t = self._csr.T.tocsr()

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def take(self, which: Any) -> Matrix:
        """The rows at the given indices, in that order."""
        np = _numpy()
        which = np.asarray(which, dtype=np.int64)
        starts, ends = self.indptr[which], self.indptr[which + 1]
        lengths = ends - starts
        pick = (np.concatenate([np.arange(s, e) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)])
                if len(which) else np.zeros(0, dtype=np.int64)).astype(np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return Matrix(indptr, self.indices[pick], self.data[pick], self.n_cols)

    def dot(self, w: Any) -> Any:
        """X @ w for w of shape (n_cols, k)."""
        np = _numpy()
        if self._csr is not None:
            return np.asarray(self._csr @ w)
        wt = np.ascontiguousarray(w.T)
        return np.stack([np.bincount(self.rows, weights=wt[k][self.indices] * self.data, minlength=self.n_rows)
                         for k in range(w.shape[1])], axis=1)

    def tdot(self, g: Any) -> Any:
        """X.T @ g for g of shape (n_rows, k)."""
        np = _numpy()
        if self._csr_t is not None:
            return np.asarray(self._csr_t @ g)
        gt = np.ascontiguousarray(g.T)
        return np.stack([np.bincount(self.indices, weights=gt[k][self.rows] * self.data, minlength=self.n_cols)
                         for k in range(g.shape[1])], axis=1)


def vectorise(vectors: Sequence[Mapping[str, float]], vocab: Mapping[str, int]) -> Matrix:
    """A :class:`Matrix` of feature dictionaries over ``vocab`` (names outside it are dropped)."""
    np = _numpy()
    indptr, indices, values = [0], [], []
    for f in vectors:
        for name, v in sorted(f.items()):  # a fixed order: sums don't depend on set order
            j = vocab.get(name)
            if j is not None:
                indices.append(j)
                values.append(v)
        indptr.append(len(indices))
    return Matrix(np.array(indptr, dtype=np.int64), np.array(indices, dtype=np.int64),
                  np.array(values, dtype=np.float64), len(vocab))


def _dot(a: Any, b: Any) -> float:
    return float((a * b).sum())  # numpy's pairwise sum, not BLAS: the same bits every run


def fit(x: Matrix, y: Any, n_classes: int, c: float, weights: Any = None, start: Any = None,
        max_iter: int = 400, tol: float = 1e-6) -> tuple[Any, Any]:
    """Multinomial logistic regression: minimise ``0.5 |W|^2 + c * sum_i w_i * log loss_i`` (bias
    unregularised) with L-BFGS. Returns (W of shape (n_cols, n_classes), bias); ``start`` is a
    flat vector to start from (a warm start converges to the same optimum, faster)."""
    np = _numpy()
    n, d, k = x.n_rows, x.n_cols, n_classes
    sw = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0

    def objective(theta: Any) -> tuple[float, Any]:
        w, b = theta[: d * k].reshape(d, k), theta[d * k:]
        z = x.dot(w) + b
        z -= z.max(axis=1, keepdims=True)
        ez = np.exp(z)
        total = ez.sum(axis=1, keepdims=True)
        logp = z - np.log(total)
        loss = -float((sw * (logp * onehot).sum(axis=1)).sum())
        g = (ez / total - onehot) * (sw * c)[:, None]
        grad_w = x.tdot(g) + w
        return 0.5 * _dot(w, w) + c * loss, np.concatenate([grad_w.ravel(), g.sum(axis=0)])

    theta = np.zeros(d * k + k) if start is None else np.array(start, dtype=np.float64)
    theta = _lbfgs(objective, theta, max_iter, tol)
    w, b = theta[: d * k].reshape(d, k), theta[d * k:]
    return w - w.mean(axis=1, keepdims=True), b - b.mean()  # softmax is shift-invariant


def _lbfgs(objective: Callable[[Any], tuple[float, Any]], theta: Any, max_iter: int, tol: float,
           memory: int = 10) -> Any:
    """Minimise a smooth convex function with L-BFGS and a backtracking (Armijo) line search."""
    np = _numpy()
    f, g = objective(theta)
    s_hist: list[Any] = []
    y_hist: list[Any] = []
    for it in range(max_iter):
        gmax = float(np.abs(g).max())
        if gmax <= tol * max(1.0, abs(f)):
            break
        # Two-loop recursion for the search direction.
        q = g.copy()
        alphas = []
        for s, yv in zip(reversed(s_hist), reversed(y_hist), strict=True):
            rho = 1.0 / _dot(yv, s)
            a = rho * _dot(s, q)
            alphas.append((rho, a))
            q -= a * yv
        if s_hist:
            q *= _dot(s_hist[-1], y_hist[-1]) / _dot(y_hist[-1], y_hist[-1])
        else:
            q /= max(1.0, math.sqrt(_dot(g, g)))
        for (s, yv), (rho, a) in zip(zip(s_hist, y_hist, strict=True), reversed(alphas), strict=True):
            q += (a - rho * _dot(yv, q)) * s
        direction = -q
        slope = _dot(g, direction)
        if slope >= 0:  # not a descent direction: restart from the gradient
            s_hist.clear()
            y_hist.clear()
            direction, slope = -g, -_dot(g, g)
        step = 1.0
        for _ in range(40):
            new = theta + step * direction
            f_new, g_new = objective(new)
            if f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break
        s, yv = new - theta, g_new - g
        if _dot(s, yv) > 1e-12:
            s_hist.append(s)
            y_hist.append(yv)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
        converged = abs(f - f_new) <= 1e-12 * max(1.0, abs(f))
        theta, f, g = new, f_new, g_new
        if converged and it > 5:
            break
    return theta


def group_folds(groups: Sequence[str], n_folds: int) -> list[Any]:
    """Fold index per row such that every group (source) lies in one fold: groups are dealt to
    folds by a hash of their name, largest first, each to the currently smallest fold."""
    np = _numpy()
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    order = sorted(sizes, key=lambda g: (-sizes[g], hashlib.sha1(g.encode()).hexdigest()))
    load = [0] * n_folds
    fold_of: dict[str, int] = {}
    for g in order:
        k = min(range(n_folds), key=lambda i: (load[i], i))
        fold_of[g] = k
        load[k] += sizes[g]
    return np.array([fold_of[g] for g in groups])


def _stratified_folds(y: Any, n_folds: int, keys: Sequence[str]) -> Any:
    """Fold index per row: within each class, rows ordered by a hash of their text, dealt in turn."""
    np = _numpy()
    folds = np.zeros(len(y), dtype=np.int64)
    for cls in sorted(set(y.tolist())):
        idx = [i for i in range(len(y)) if y[i] == cls]
        idx.sort(key=lambda i: hashlib.sha1(keys[i].encode()).hexdigest())
        for r, i in enumerate(idx):
            folds[i] = r % n_folds
    return folds


@dataclass
class Fitted:
    """A trained model, ready to write: classes, bias, temperature, weights by feature name."""

    classes: tuple[str, ...]
    bias: list[float]
    temperature: float
    weights: dict[str, list[float]]
    info: dict[str, Any]
    conversation: ConversationWeights = DEFAULT_CONVERSATION
    grams: dict[str, Any] | None = None  # the character n-gram model (GramModel.to_json), or None

    def to_json(self) -> dict[str, Any]:
        own = [c[len(CONTEXT_PREFIX):] for c in self.weights if c.startswith(CONTEXT_PREFIX)]
        concepts = {c: list(members(c)) for c in sorted({*self.weights, *own}) if is_concept(c)}
        out = {"format": MODEL_FORMAT, "classes": list(self.classes), "bias": self.bias,
               "temperature": self.temperature, "conversation": self.conversation.to_json(),
               "trained_on": self.info, "weights": self.weights, "concepts": concepts}
        if self.grams is not None:
            out["grams"] = self.grams
        return out


@dataclass(frozen=True)
class GramOptions:
    """The second model: logistic regression over the last user turn's character n-grams
    (:func:`router.classify.features.char_grams`), fitted on its own with a stronger L2 pull
    (``c``) and added to the word model's logits times ``weight``. Two views fitted apart
    generalise better than either, or than one model over both (docs/classifier.md)."""

    n: int = 4
    c: float = 100.0
    weight: float = 0.5
    min_df: int = 3

    @classmethod
    def of(cls, trained_on: Mapping[str, Any] | None) -> GramOptions | None:
        """The options a model was trained with (its file's ``trained_on``; None: no n-gram model)."""
        options = (trained_on or {}).get("grams")
        if not options:
            return None
        return cls(int(options["n"]), float(options["c"]), float(options["weight"]), int(options["min_df"]))


DEFAULT_GRAMS = GramOptions()


def gram_design(rows: Sequence[Mapping[str, Any]], options: GramOptions) -> tuple[Matrix, list[str]]:
    """The n-gram matrix of every row's last user turn (each row's grams valued one over the
    square root of their number), over the grams seen in at least ``min_df`` rows."""
    vectors = []
    for r in rows:
        messages = r.get("messages") or [{"role": "user", "content": r.get("text", "")}]
        main, _ = conversation_parts(messages, r.get("tools"), DEFAULT_CONVERSATION)
        grams = char_grams(main.lower(), options.n) if main else set()
        vectors.append(dict.fromkeys(grams, 1.0 / math.sqrt(len(grams))) if grams else {})
    df: dict[str, int] = {}
    for v in vectors:
        for g in v:
            df[g] = df.get(g, 0) + 1
    names = sorted(g for g, k in df.items() if k >= options.min_df)
    return vectorise(vectors, {g: i for i, g in enumerate(names)}), names


def _gram_logits(gx: Matrix, y: Any, k: int, options: GramOptions, sw: Any, tr: Any, te: Any,
                 min_weight: float) -> Any:
    w, b = fit(gx.take(tr), y[tr], k, options.c, sw[tr])
    return gx.take(te).dot(_rounded(w, min_weight)) + b


def _temperature(logits: Any, y: Any) -> float:
    """The softmax temperature minimising log loss on out-of-fold logits (calibration)."""
    np = _numpy()
    best_t, best_nll = 1.0, float("inf")
    for t in np.arange(0.3, 4.001, 0.05):
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        nll = -float(logp[np.arange(len(y)), y].mean())
        if nll < best_nll:
            best_t, best_nll = float(round(t, 2)), nll
    return best_t


@dataclass
class Design:
    """Rows turned into what the optimiser needs: classes, labels, the feature matrix, its names."""

    classes: tuple[str, ...]
    y: Any
    x: Matrix
    names: list[str]
    weights: Any


def design(rows: Sequence[Mapping[str, Any]], *, weights: Sequence[float] | None = None, min_df: int = 2,
           conversation: ConversationWeights = DEFAULT_CONVERSATION, classes: Sequence[str] | None = None) -> Design:
    """Features of every row (as the classifier computes them), over the features seen in at
    least ``min_df`` rows."""
    np = _numpy()
    classes = tuple(classes) if classes else tuple(sorted({str(r["task"]) for r in rows}))
    if len(classes) < 2:
        raise TrainError(f"need at least two tasks to tell apart, got {list(classes)}")
    y = np.array([classes.index(str(r["task"])) for r in rows])
    vectors = [row_vector(r, conversation) for r in rows]
    df: dict[str, int] = {}
    for v in vectors:
        for name in v:
            df[name] = df.get(name, 0) + 1
    names = sorted(n for n, k in df.items() if k >= min_df)
    x = vectorise(vectors, {name: i for i, name in enumerate(names)})
    sw = np.ones(len(rows)) if weights is None else np.asarray(weights, dtype=np.float64)
    return Design(classes, y, x, names, sw)


def _rounded(w: Any, min_weight: float) -> Any:
    """The weights as a model file stores them: features that can't move a decision dropped,
    the rest rounded to 1e-3 (so cross-validation scores what would ship)."""
    np = _numpy()
    keep = np.abs(w).max(axis=1, keepdims=True) >= min_weight
    return np.where(keep, np.round(w, 3), 0.0)


def _folds(d: Design, n_folds: int, groups: Sequence[str] | None, rows: Sequence[Mapping[str, Any]]) -> Any:
    if groups is not None and len(set(groups)) >= n_folds:
        return group_folds(groups, n_folds)
    return _stratified_folds(d.y, n_folds, [json.dumps(r.get("text") or r.get("messages"), sort_keys=True)
                                            for r in rows])


def train(rows: Sequence[Mapping[str, Any]], *, c: float | Sequence[float] = 10.0, folds: int = 5,
          groups: Sequence[str] | None = None, weights: Sequence[float] | None = None, min_df: int = 2,
          min_weight: float = 0.02, log: Callable[[str], None] | None = None,
          info: Mapping[str, Any] | None = None, conversation: ConversationWeights = DEFAULT_CONVERSATION,
          warm_start: Mapping[str, Any] | None = None, temperature: float = 1.0,
          grams: GramOptions | None = DEFAULT_GRAMS) -> Fitted:
    """Fit a model on labelled rows (``text`` or ``messages``/``tools``, and ``task``: any name).

    ``c``: the inverse L2 strength, or several to choose from by cross-validation. ``folds``
    cross-validation folds for that choice and for calibrating the temperature (0 or 1: none; the
    temperature stays 1), split by ``groups`` (sources: each lies in one fold, so the choice
    rewards generalising to unseen sources) when given, else stratified by task. ``weights``:
    per-row sample weights. ``warm_start``: a model file's JSON (``classes``, ``bias``, ``weights``)
    to start the optimiser from, for the tasks and features it shares with these rows: the optimum
    is the same, it is only reached in fewer steps (``router train --with-shipped-data`` starts from
    the shipped model). ``temperature``: the softmax temperature when there is no cross-validation
    to fit it. ``grams``: the character n-gram model beside the word model (None: none).
    """
    np = _numpy()
    say = log or (lambda _msg: None)
    d = design(rows, weights=weights, min_df=min_df, conversation=conversation)
    start = _start(d, warm_start) if warm_start else None
    say(f"{len(rows)} rows, {len(d.classes)} tasks, {len(d.names)} features (seen in >= {min_df} rows)")
    grid = [float(c)] if isinstance(c, int | float) else [float(v) for v in c]
    best_c = grid[0]
    kk = len(d.classes)
    gx, gnames = gram_design(rows, grams) if grams is not None else (None, [])
    if gx is not None:
        say(f"  character {grams.n}-grams: {len(gnames)} (seen in >= {grams.min_df} rows), C={grams.c:g}, "
            f"weight {grams.weight:g}")
    if folds and folds > 1 and len(rows) >= 2 * folds:
        fold = _folds(d, folds, groups, rows)
        best_acc, best_logits = -1.0, None
        gram_logits = np.zeros((len(rows), kk))
        if gx is not None:  # the gram model's out-of-fold logits: the same for every C of the word model
            for k in range(folds):
                tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
                if len(te):
                    gram_logits[te] = _gram_logits(gx, d.y, kk, grams, d.weights, tr, te, min_weight)
            gram_logits *= grams.weight
        for cv in grid:
            logits = np.zeros((len(rows), kk))
            for k in range(folds):
                tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
                if not len(te):
                    continue
                w, b = fit(d.x.take(tr), d.y[tr], kk, cv, d.weights[tr], start=start)
                logits[te] = d.x.take(te).dot(_rounded(w, min_weight)) + b
            logits += gram_logits
            acc = float((logits.argmax(1) == d.y).mean())
            say(f"  C={cv:g}: {folds}-fold accuracy {acc:.4f}")
            if acc > best_acc:
                best_c, best_acc, best_logits = cv, acc, logits
        temperature = _temperature(best_logits, d.y)
    w, b = fit(d.x, d.y, len(d.classes), best_c, d.weights, start=start)
    out = _kept(d.names, _rounded(w, min_weight))
    say(f"C={best_c:g}, temperature={temperature}, {len(out)} features kept")
    gram_model = None
    if gx is not None:
        gw, gb = fit(gx, d.y, kk, grams.c, d.weights)
        kept = _kept(gnames, _rounded(gw, min_weight))
        gram_model = GramModel(grams.n, grams.weight, tuple(round(float(v), 4) for v in gb), kept).to_json()
        say(f"  {len(kept)} character {grams.n}-grams kept")
    meta = {"rows": len(rows), "C": best_c, **(info or {})}
    if grams is not None:
        meta["grams"] = {"n": grams.n, "c": grams.c, "weight": grams.weight, "min_df": grams.min_df}
    return Fitted(d.classes, [round(float(v), 4) for v in b], temperature, out, meta, conversation, gram_model)


def _kept(names: Sequence[str], w: Any) -> dict[str, list[float]]:
    """Name -> weights of the rows of rounded weights ``w`` that are not all zero (what a model
    file stores)."""
    np = _numpy()
    return {names[j]: [float(v) for v in w[j]] for j in np.flatnonzero(np.abs(w).max(axis=1) > 0).tolist()}


def _start(d: Design, model: Mapping[str, Any]) -> Any:
    """A flat start vector for :func:`fit` from a model's weights, for the classes and features it
    shares with the design (zero elsewhere)."""
    np = _numpy()
    k = len(d.classes)
    w = np.zeros((len(d.names), k))
    b = np.zeros(k)
    shared = [(j, list(model["classes"]).index(c)) for j, c in enumerate(d.classes) if c in model["classes"]]
    weights = model.get("weights", {})
    for i, name in enumerate(d.names):
        v = weights.get(name)
        if v is not None:
            for j, m in shared:
                w[i, j] = v[m]
    for j, m in shared:
        b[j] = model["bias"][m]
    return np.concatenate([w.ravel(), b])


def leave_one_source_out(rows: Sequence[Mapping[str, Any]], sources: Sequence[str], *, c: float = 10.0,
                         weights: Sequence[float] | None = None, min_df: int = 2, min_weight: float = 0.02,
                         conversation: ConversationWeights = DEFAULT_CONVERSATION, temperature: float = 1.0,
                         log: Callable[[str], None] | None = None,
                         grams: GramOptions | None = DEFAULT_GRAMS) -> list[tuple[str, float]]:
    """For every source, fit on all the other sources and predict its rows: (task, confidence)
    per row, each from a model that never saw the row's source. Confidences use ``temperature``
    (the shipped model's); ``grams`` the character n-gram model's options (None: the word model
    alone). Fits start from the all-sources fit (the optimum is unique, so this only saves time)."""
    np = _numpy()
    say = log or (lambda _msg: None)
    d = design(rows, weights=weights, min_df=min_df, conversation=conversation)
    k = len(d.classes)
    gx = gram_design(rows, grams)[0] if grams is not None else None
    w, b = fit(d.x, d.y, k, c, d.weights)
    start = np.concatenate([w.ravel(), b])
    src = np.array(list(sources))
    out: list[tuple[str, float]] = [("", 0.0)] * len(rows)
    for name in sorted(set(sources)):
        te, tr = np.flatnonzero(src == name), np.flatnonzero(src != name)
        if len(set(d.y[tr].tolist())) < 2:
            continue
        ws, bs = fit(d.x.take(tr), d.y[tr], k, c, d.weights[tr], start=start)
        z = d.x.take(te).dot(_rounded(ws, min_weight)) + bs
        if gx is not None:
            z += grams.weight * _gram_logits(gx, d.y, k, grams, d.weights, tr, te, min_weight)
        z /= temperature
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        for i, row_p in zip(te.tolist(), p.tolist(), strict=True):
            j = max(range(k), key=row_p.__getitem__)
            out[i] = (d.classes[j], row_p[j])
        say(f"  {name}: {sum(out[i][0] == rows[i]['task'] for i in te.tolist())}/{len(te)}")
    return out


SHIPPED_ROWS = DEFAULT_MODEL_PATH.parent / "training_rows.jsonl.gz"


def shipped_rows() -> list[dict]:
    """The rows the shipped model was trained on (coding, reasoning, general; written by
    ``scripts/train_classifier.py``), for ``router train --with-shipped-data``."""
    try:
        with gzip.open(SHIPPED_ROWS, "rt", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        raise TrainError(f"the shipped training rows are missing ({SHIPPED_ROWS}); reinstall router") from None


def shipped_model() -> dict[str, Any]:
    """The shipped model file's JSON (to warm-start a fit on the shipped rows)."""
    with gzip.open(DEFAULT_MODEL_PATH, "rb") as fh:
        return json.loads(fh.read())


def write_model(model: Fitted, path: str | Path) -> int:
    """Write the model as gzip-compressed JSON (no name or time in the header: same model, same
    bytes). Returns the file size."""
    payload = json.dumps(model.to_json(), ensure_ascii=True, sort_keys=True, separators=(",", ":")).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=9) as fh:
        fh.write(payload)
    return path.stat().st_size
