"""`build_criterion(text)`: the official criterion strings, parsed with `ast` (never `eval`).

The official scripts `eval` a string such as `"ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)"` in a
namespace (shared/reference/training.md §5). Here a small interpreter accepts exactly that language:
calls of the known constructors with literal arguments (numbers, strings, booleans, None, tuples,
`torch.float16`-style dtypes, `inf`), `+` between criteria and `*` by a number (the official `MultiLoss`
semantics, `f3d_jax.train.losses.multiloss`), and arithmetic between numbers. Anything else is refused
with an error naming the string.

Namespaces (the official ones):
  * 'dust3r' (`dust3r/training.py`): L21, L21Loss, Regr3D, Regr3D_ShiftInv, Regr3D_ScaleInv,
    Regr3D_ScaleShiftInv, ConfLoss.
  * 'mast3r' (`mast3r/train.py`): the DUSt3R one with Regr3D and Regr3D_ScaleShiftInv replaced by the MASt3R
    classes ('?' metric-aware norm modes, sky loss 2 by default, loss_in_log, max_metric_scale), plus
    MatchingLoss, ConfMatchingLoss, InfoNCE, APLoss.
  * 'stereoflow' (`croco/stereoflow/train.py`): L1Loss, LaplacianLoss, LaplacianLossBounded,
    LaplacianLossBounded2.
With `namespace=None` it is inferred: 'stereoflow' if the string names a stereo/flow criterion, 'mast3r' if
it names a MASt3R-only class or keyword or a '?' norm mode, else 'dust3r'. Note the namespaces differ for the
same string: MASt3R's `Regr3D` adds the sky term (pass namespace='mast3r' to train MASt3R with a
DUSt3R-looking string).
"""

from __future__ import annotations

import ast
import math
import numbers
from typing import Any

import jax.numpy as jnp

from f3d_jax.train.losses import stereoflow as sf
from f3d_jax.train.losses.matching import APLoss, ConfMatchingLoss, InfoNCE, MatchingLoss
from f3d_jax.train.losses.multiloss import Sum, Term
from f3d_jax.train.losses.pointmaps import L21, ConfLoss, L21Loss, regr3d_factory


class CriterionError(ValueError):
    """A criterion string that cannot be built (syntax, unknown name, bad arguments)."""


def _conf_loss(pixel_loss: Any, alpha: float = 1, **unexpected: Any) -> ConfLoss:
    if unexpected:
        hint = (" (the MASt3R README's 'Our Hyperparameters' string passes loss_in_log to ConfLoss, which the official "
                "code rejects too; it is a Regr3D argument and defaults to False: drop it or move it into Regr3D(...))"
                if "loss_in_log" in unexpected else "")
        raise TypeError(f"ConfLoss got unexpected keyword arguments {sorted(unexpected)}{hint}")
    return ConfLoss(pixel_loss, alpha)


def _namespace(name: str) -> dict[str, Any]:
    if name == "stereoflow":
        return {"L1Loss": sf.L1Loss, "LaplacianLoss": sf.LaplacianLoss,
                "LaplacianLossBounded": sf.LaplacianLossBounded, "LaplacianLossBounded2": sf.LaplacianLossBounded2}
    ns: dict[str, Any] = {
        "L21": L21, "L21Loss": L21Loss, "ConfLoss": _conf_loss,
        "Regr3D": regr3d_factory("dust3r"),
        "Regr3D_ShiftInv": regr3d_factory("dust3r", "Regr3D_ShiftInv", shift_inv=True),
        "Regr3D_ScaleInv": regr3d_factory("dust3r", "Regr3D_ScaleInv", scale_inv=True),
        "Regr3D_ScaleShiftInv": regr3d_factory("dust3r", "Regr3D_ScaleShiftInv", shift_inv=True, scale_inv=True),
    }
    if name == "mast3r":
        ns |= {"Regr3D": regr3d_factory("mast3r"),
               "Regr3D_ScaleShiftInv": regr3d_factory("mast3r", "Regr3D_ScaleShiftInv", True, True),
               "MatchingLoss": MatchingLoss, "ConfMatchingLoss": ConfMatchingLoss, "InfoNCE": InfoNCE,
               "APLoss": APLoss}
    elif name != "dust3r":
        raise CriterionError(f"unknown criterion namespace {name!r} (dust3r, mast3r or stereoflow)")
    return ns


NAMESPACES = ("dust3r", "mast3r", "stereoflow")

# The criteria of the official training commands (READMEs and train.py defaults), with their namespace.
TRAIN_CRITERIA = {
    "dust3r": ("ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)", "dust3r"),
    "mast3r": ("ConfLoss(Regr3D(L21, norm_mode='?avg_dis'), alpha=0.2) + 0.075*ConfMatchingLoss(MatchingLoss("
               "InfoNCE(mode='proper', temperature=0.05), negatives_padding=0, blocksize=8192), alpha=10.0, "
               "confmode='mean')", "mast3r"),
    "stereo": ("LaplacianLossBounded2()", "stereoflow"),
    "stereo_eth3d": ("LaplacianLoss()", "stereoflow"),
    "flow": ("LaplacianLossBounded()", "stereoflow"),
}
TEST_CRITERIA = {
    "dust3r": ("Regr3D_ScaleShiftInv(L21, gt_scale=True)", "dust3r"),
    "mast3r": ("Regr3D_ScaleShiftInv(L21, norm_mode='?avg_dis', gt_scale=True, sky_loss_value=0) + -1.*MatchingLoss("
               "APLoss(nq='torch', fp=torch.float16), negatives_padding=12288)", "mast3r"),
}
_MAST3R_ONLY = {"MatchingLoss", "ConfMatchingLoss", "InfoNCE", "APLoss"}
_MAST3R_KWARGS = {"sky_loss_value", "max_metric_scale", "loss_in_log", "opt_fit_gt"}
_DTYPES = {"float16": jnp.float16, "half": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32,
           "float": jnp.float32, "float64": jnp.float64, "double": jnp.float64}
_CONSTANTS = {"inf": math.inf, "nan": math.nan, "pi": math.pi}


def infer_namespace(text: str) -> str:
    """The namespace `build_criterion(text)` uses when none is given (see the module docstring)."""
    tree = _parse(text)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    if names & set(_namespace("stereoflow")):
        return "stereoflow"
    kwargs = {k.arg for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords}
    question = any(isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("?")
                   for n in ast.walk(tree))
    if names & _MAST3R_ONLY or kwargs & _MAST3R_KWARGS or question:
        return "mast3r"
    return "dust3r"


def _parse(text: str) -> ast.Expression:
    if not isinstance(text, str) or not text.strip():
        raise CriterionError(f"build_criterion: expected a criterion string, got {text!r}")
    try:
        return ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise CriterionError(f"criterion {text!r}: invalid syntax at column {e.offset}: {e.msg}") from None


def build_criterion(text: str, namespace: str | None = None) -> Any:
    """Build the criterion an official training command names.

    text: e.g. "ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)" (DUSt3R), the MASt3R README's
    "ConfLoss(Regr3D(L21, norm_mode='?avg_dis'), alpha=0.2) + 0.075*ConfMatchingLoss(MatchingLoss(InfoNCE(
    mode='proper', temperature=0.05), negatives_padding=0, blocksize=8192), alpha=10.0, confmode='mean')",
    or "LaplacianLossBounded2()" (stereo). namespace: 'dust3r', 'mast3r', 'stereoflow' or None (inferred).

    Returns a pure, jit-able callable: for DUSt3R / MASt3R `criterion(gt1, gt2, pred1, pred2, *, key=None)
    -> (loss, details)` (a `Sum` of weighted terms); for stereo/flow `criterion(predictions, gt[, conf]) ->
    loss`. Raises `CriterionError` (a ValueError) naming the string on bad syntax, unknown names or arguments.
    """
    tree = _parse(text)
    ns_name = namespace or infer_namespace(text)
    ns = _namespace(ns_name)

    def fail(node: ast.AST, msg: str) -> CriterionError:
        col = getattr(node, "col_offset", None)
        where = f" at column {col}" if col is not None else ""
        return CriterionError(f"criterion {text!r} ({ns_name} namespace){where}: {msg}")

    def is_crit(v: Any) -> bool:
        return isinstance(v, (Term, Sum))

    def is_num(v: Any) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool)

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            if node.value is None or isinstance(node.value, (bool, int, float, str)):
                return node.value
            raise fail(node, f"unsupported constant {node.value!r}")
        if isinstance(node, ast.Name):
            if node.id in ns:
                return ns[node.id]
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            raise fail(node, f"unknown name {node.id!r} (known: {', '.join(sorted(ns))})")
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in ("torch", "np", "numpy", "math", "jnp"):
                if node.attr in _DTYPES:
                    return _DTYPES[node.attr]
                if node.attr in _CONSTANTS:
                    return _CONSTANTS[node.attr]
            raise fail(node, f"unsupported attribute {ast.unparse(node)!r} (only torch.float16/32/64, "
                             "torch.bfloat16 and inf)")
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(ev(e) for e in node.elts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            if not is_num(v):
                raise fail(node, f"unary {'-' if isinstance(node.op, ast.USub) else '+'} applies to numbers only "
                                 "(write -1.*Loss(...))")
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            op = node.op
            if is_num(a) and is_num(b) and isinstance(op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
                if isinstance(op, ast.Div):
                    if b == 0:
                        raise fail(node, "division by zero")
                    return a / b
                return a + b if isinstance(op, ast.Add) else a - b if isinstance(op, ast.Sub) else a * b
            if isinstance(op, ast.Add) and is_crit(a) and is_crit(b):
                return a + b
            if isinstance(op, ast.Mult) and ((is_crit(a) and is_num(b)) or (is_num(a) and is_crit(b))):
                return a * b
            raise fail(node, f"unsupported operation {ast.unparse(node)!r}: criteria combine with '+' and "
                             "'number * criterion' only")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise fail(node, f"unsupported call {ast.unparse(node.func)!r}")
            fn = ev(node.func)
            if not callable(fn) or is_crit(fn) or isinstance(fn, L21Loss):
                raise fail(node, f"{node.func.id} is not a constructor")
            args = [ev(a) for a in node.args]
            kwargs = {}
            for k in node.keywords:
                if k.arg is None:
                    raise fail(k, "'**' arguments are not supported")
                kwargs[k.arg] = ev(k.value)
            try:
                return fn(*args, **kwargs)
            except (TypeError, ValueError, KeyError) as e:
                raise fail(node, f"{node.func.id}(...): {e}") from None
        raise fail(node, f"unsupported syntax {type(node).__name__}: {ast.unparse(node)!r}")

    try:
        out = ev(tree.body)
    except CriterionError:
        raise
    except (TypeError, ValueError) as e:  # e.g. a chain that cannot stand alone (Sum's checks)
        raise CriterionError(f"criterion {text!r} ({ns_name} namespace): {e}") from None
    if ns_name == "stereoflow":
        if not isinstance(out, (sf.L1Loss, sf.LaplacianLoss, sf.LaplacianLossBounded, sf.LaplacianLossBounded2)):
            raise CriterionError(f"criterion {text!r}: does not evaluate to a stereo/flow criterion ({out!r})")
        return out
    if isinstance(out, Term):
        try:
            out = Sum(((1.0, out),))
        except (TypeError, ValueError) as e:
            raise CriterionError(f"criterion {text!r} ({ns_name} namespace): {e}") from None
    if not isinstance(out, Sum):
        raise CriterionError(f"criterion {text!r}: does not evaluate to a criterion ({out!r})")
    return out

