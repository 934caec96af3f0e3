"""Constraints for NoCaps constrained beam search (CBS): detector boxes -> class names -> FSM.

The original (microsoft/Oscar `oscar/utils/cbs.py` at 266075f, itself from nocaps-org/updown-baseline)
reads four files:

| file | format |
| --- | --- |
| boxes (`val.cbsbox.tsv`) | `image_key \\t [{"rect": [x1, y1, x2, y2], "class": name, "conf": score}, ...]` |
| class hierarchy (JSON) | nested `{"LabelName": name, "Subcategory": [...]}` (Open Images 600 classes) |
| constraint tokens (TSV) | `word \\t wordpiece,wordpiece,...` |
| token forms (TSV) | `token \\t form,form,...` (dog -> dog, dogs, puppy) |

`ConstraintFilter` turns an image's boxes into at most three class names; `FSMBuilder` turns those
into the sparse `ConstraintFSM` that `oscar_hf.cbs_oscar.constrained_beam_search` decodes with.
`NocapsConstraints` chains the three for an image key.

Kept from the original because they decide which constraints an image gets:
- no confidence threshold beyond score > 0 (score 0 marks padding boxes);
- the 40-class blacklist, then the "hierarchy NMS", whose keep test lets every box survive (boxes
  are visited by ascending hierarchy height and a box is kept when its height is >= the current
  one's, which all later boxes are); a class maps to the first node in pre-order whose lower-cased
  name is a substring of it ("elephant" -> "Ant");
- top-3 by confidence, then the renames, then de-duplication, so duplicate classes use up slots;
- the FSM's "self-loop reset": connecting a word from a state rewrites that state's whole
  self-loop to "every token but this word's forms", so earlier constraints' forms both advance and
  stay (a non-deterministic FSM); multi-token constraints get a fresh chain of sub-states per
  from-state, where any other token (`[SEP]` too) resets; a form missing from the vocabulary
  becomes `[UNK]`.
Differs on purpose: de-duplication keeps the first occurrence in confidence order, where the
original's `list(set(...))` order depended on PYTHONHASHSEED (the order decides which constraint is
FSM bit 0, 1, 2); bad input raises a ValueError naming the file or word instead of a
KeyError/IndexError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from oscar_hf.cbs_oscar import ConstraintFSM


BLACKLIST: frozenset[str] = frozenset(
    {
        "auto part", "bathroom accessory", "bicycle wheel", "boy", "building", "clothing", "door handle",
        "fashion accessory", "footwear", "girl", "hiking equipment", "human arm", "human beard", "human body",
        "human ear", "human eye", "human face", "human foot", "human hair", "human hand", "human head", "human leg",
        "human mouth", "human nose", "land vehicle", "mammal", "man", "person", "personal care", "plant",
        "plumbing fixture", "seat belt", "skull", "sports equipment", "tire", "tree", "vehicle registration plate",
        "wheel", "woman", "__background__",
    }
)  # fmt: skip
"""Open Images classes never used as constraints (body parts, people, generic groups, parts)."""

RENAMES: dict[str, str] = {
    "band-aid": "bandaid",
    "wood-burning stove": "wood burning stove",
    "kitchen & dining room table": "table",
    "salt and pepper shakers": "salt and pepper",
    "power plugs and sockets": "power plugs",
    "luggage and bags": "luggage",
}
"""Class names replaced before they become constraints."""


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _existing(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist; pass the path of the {what} file.")
    return path


def load_wordforms(path: str | os.PathLike) -> dict[str, list[str]]:
    """Reads a `key \\t value,value,...` TSV (constraint tokens or token forms) into a dict."""
    forms: dict[str, list[str]] = {}
    for number, line in enumerate(_existing(path, "word-form TSV").read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise ValueError(f"{path}:{number}: {line!r} has no TAB; expected 'word<TAB>form,form,...'.")
        forms[parts[0]] = parts[1].split(",")
    return forms


@dataclass
class DetectorBoxes:
    """Detections of one image: boxes (n, 4) as [x1, y1, x2, y2] pixels, lower-cased classes, scores."""

    boxes: np.ndarray
    class_names: list[str]
    scores: np.ndarray

    @classmethod
    def empty(cls) -> DetectorBoxes:
        return cls(np.zeros((0, 4)), [], np.zeros(0))


def read_boxes_tsv(path: str | os.PathLike) -> dict[str, DetectorBoxes]:
    """The original's boxes file (`val.cbsbox.tsv`): image key -> detections; classes lower-cased."""
    images: dict[str, DetectorBoxes] = {}
    for number, line in enumerate(_existing(path, "boxes TSV").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 2:
            raise ValueError(
                f"{path}:{number}: expected 'image_key<TAB>[{{rect, class, conf}}, ...]', got {line[:80]!r}."
            )
        try:
            detections = json.loads(parts[1])
            images[parts[0]] = DetectorBoxes(
                boxes=np.array([d["rect"] for d in detections], dtype=np.float64).reshape(-1, 4),
                class_names=[d["class"].lower() for d in detections],
                scores=np.array([d["conf"] for d in detections], dtype=np.float64),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path}:{number}: each box must be {{'rect': [x1, y1, x2, y2], 'class': str, 'conf': float}} ({error})."
            ) from error
    return images


def read_boxes_json(path: str | os.PathLike) -> dict[int, DetectorBoxes]:
    """nocaps-org's COCO-style `nocaps_{val,test}_oi_detector_boxes.json`: image id -> detections.

    `categories[category_id]` names the class (index 0 is `__background__`); `bbox` is already
    [x1, y1, x2, y2] there, not COCO's [x, y, w, h].
    """
    data = json.loads(_existing(path, "detector boxes JSON").read_text(encoding="utf-8"))
    if not {"categories", "annotations"} <= set(data):
        raise ValueError(f"{path} lacks 'categories'/'annotations'; expected nocaps' oi_detector_boxes JSON.")
    names = {index: category["name"].lower() for index, category in enumerate(data["categories"])}
    grouped: dict[int, list[dict]] = {image["id"]: [] for image in data.get("images", [])}
    for annotation in data["annotations"]:
        grouped.setdefault(annotation["image_id"], []).append(annotation)
    return {
        image_id: DetectorBoxes(
            boxes=np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4),
            class_names=[names[a["category_id"]] for a in annotations],
            scores=np.array([a["score"] for a in annotations], dtype=np.float64),
        )
        for image_id, annotations in grouped.items()
    }


# ----------------------------------------------------------------------------------------------
# Class names from boxes
# ----------------------------------------------------------------------------------------------


def _hierarchy_heights(tree: dict) -> list[tuple[str, int]]:
    """(lower-cased name, height) of every node in pre-order; a leaf has height 0."""
    nodes: list[tuple[str, int]] = []

    def visit(node: dict) -> int:
        slot = len(nodes)
        nodes.append((node["LabelName"].lower(), 0))
        height = max((visit(child) + 1 for child in node.get("Subcategory", [])), default=0)
        nodes[slot] = (nodes[slot][0], height)
        return height

    visit(tree)
    return nodes


class ConstraintFilter:
    """Chooses an image's constraint classes from its detections, as the original `ConstraintFilter`.

    Args:
        hierarchy: the class hierarchy JSON (path) or its parsed tree.
        nms_threshold: IoU of the hierarchy NMS (0.85).
        max_given_constraints: classes kept (3).
    """

    def __init__(
        self, hierarchy: str | os.PathLike | dict, nms_threshold: float = 0.85, max_given_constraints: int = 3
    ):
        if not isinstance(hierarchy, dict):
            hierarchy = json.loads(_existing(hierarchy, "class hierarchy JSON").read_text(encoding="utf-8"))
        if "LabelName" not in hierarchy:
            raise ValueError("the class hierarchy must be nested {'LabelName': ..., 'Subcategory': [...]} nodes.")
        self.nodes = _hierarchy_heights(hierarchy)
        self.nms_threshold = nms_threshold
        self.max_given_constraints = max_given_constraints

    def height(self, class_name: str) -> int:
        """Height of the first node (pre-order) whose name is a substring of `class_name`."""
        for name, height in self.nodes:
            if name in class_name:
                return height
        raise ValueError(
            f"class {class_name!r} matches no node of the class hierarchy; add it to the hierarchy JSON "
            "(nodes match by lower-cased substring)."
        )

    def __call__(self, detections: DetectorBoxes) -> list[str]:
        keep = [
            i
            for i, (name, score) in enumerate(zip(detections.class_names, detections.scores))
            if score > 0 and name not in BLACKLIST
        ]
        boxes = detections.boxes[keep]
        names = [detections.class_names[i] for i in keep]
        scores = detections.scores[keep]

        keep = self._hierarchy_nms(boxes, names)
        names = [names[i] for i in keep]
        scores = scores[keep]

        ranked = sorted(zip(names, scores), key=lambda item: -item[1])[: self.max_given_constraints]
        renamed = [RENAMES.get(name, name) for name, _ in ranked]
        return list(dict.fromkeys(renamed))

    def _hierarchy_nms(self, boxes: np.ndarray, names: list[str]) -> list[int]:
        """The original's NMS, keep test included: it never suppresses a box (see module docstring)."""
        if not names:
            return []
        heights = np.array([self.height(name) for name in names])
        order = heights.argsort()
        x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
        areas = (x2 - x1 + 1) * (y2 - y1 + 1)
        kept = []
        while order.size > 0:
            current, rest = order[0], order[1:]
            kept.append(int(current))
            width = np.maximum(0.0, np.minimum(x2[current], x2[rest]) - np.maximum(x1[current], x1[rest]) + 1)
            height = np.maximum(0.0, np.minimum(y2[current], y2[rest]) - np.maximum(y1[current], y1[rest]) + 1)
            intersection = width * height
            iou = intersection / (areas[current] + areas[rest] - intersection)
            order = rest[(heights[rest] >= heights[current]) | (iou <= self.nms_threshold)]
        return kept


# ----------------------------------------------------------------------------------------------
# The FSM
# ----------------------------------------------------------------------------------------------


class FSMBuilder:
    """Builds the sparse constraint FSM of the original `FiniteStateMachineBuilder`.

    States: `2 ** max_given_constraints` main states (bit i set = constraint i decoded) followed by
    sub-states, `num_main_states * max_words_per_constraint` in all (3 and 4 give the original's 32).

    Args:
        tokenizer: anything with `convert_tokens_to_ids` (the captioning model's BERT tokenizer).
        constraint_tokens: word -> WordPiece tokens (`cbs_constraint` TSV path or dict).
        token_forms: token -> accepted forms (`cbs_tokenforms` TSV path or dict).
    """

    def __init__(
        self,
        tokenizer,
        constraint_tokens: str | os.PathLike | dict[str, list[str]],
        token_forms: str | os.PathLike | dict[str, list[str]],
        max_given_constraints: int = 3,
        max_words_per_constraint: int = 4,
    ):
        self.tokenizer = tokenizer
        self.constraint_tokens = (
            constraint_tokens if isinstance(constraint_tokens, dict) else load_wordforms(constraint_tokens)
        )
        self.token_forms = token_forms if isinstance(token_forms, dict) else load_wordforms(token_forms)
        self.max_given_constraints = max_given_constraints
        self.max_words_per_constraint = max_words_per_constraint
        self.num_main_states = 2**max_given_constraints
        self.num_states = self.num_main_states * max_words_per_constraint

    def tokens(self, constraint: str) -> list[str]:
        """The constraint's WordPiece tokens (words looked up and joined), at most max_words_per_constraint."""
        pieces: list[str] = []
        for word in constraint.split():
            if word not in self.constraint_tokens:
                raise ValueError(
                    f"constraint word {word!r} (of {constraint!r}) is not in the constraint-token file; add a line "
                    f"'{word}<TAB>wordpiece,...'."
                )
            pieces.extend(self.constraint_tokens[word])
        return pieces[: self.max_words_per_constraint]

    def form_ids(self, constraint: str) -> list[list[int]]:
        """Per token position, the ids that satisfy it (the token's forms; unknown forms become [UNK])."""
        return [
            list(self.tokenizer.convert_tokens_to_ids(self.token_forms.get(t, [t]))) for t in self.tokens(constraint)
        ]

    def build(self, constraints: Sequence[str]) -> ConstraintFSM:
        if len(constraints) > self.max_given_constraints:
            raise ValueError(
                f"{len(constraints)} constraints {list(constraints)} exceed max_given_constraints="
                f"{self.max_given_constraints}; filter them with ConstraintFilter first."
            )
        forms = [self.form_ids(c) for c in constraints]
        token_ids = sorted({i for constraint in forms for position in constraint for i in position})
        column = {token: k for k, token in enumerate(token_ids)}
        graph = _SparseGraph(self.num_states, len(token_ids))
        for state in range(self.num_main_states):
            graph.allow_all(state, state)  # every main state starts with a self-loop on every token

        next_substate = self.num_main_states
        for n, constraint_forms in enumerate(forms):
            stride = 2**n
            for from_state in range(self.num_main_states):
                if from_state & stride:
                    continue  # only states that lack this constraint's bit advance on it
                word_state = from_state
                for position, ids in enumerate(constraint_forms):
                    columns = [column[i] for i in ids]
                    if position < len(constraint_forms) - 1:
                        if next_substate >= self.num_states:
                            raise ValueError(
                                f"constraints {list(constraints)} need more than the {self.num_states - self.num_main_states} "
                                "sub-states there are (sum over constraints of (tokens - 1), times the from-states); "
                                "raise max_words_per_constraint or give fewer multi-token constraints."
                            )
                        graph.connect(word_state, next_substate, columns, reset_state=from_state)
                        word_state = next_substate
                        next_substate += 1
                    else:
                        graph.connect(word_state, from_state + stride, columns, reset_state=from_state)
        return ConstraintFSM(
            token_ids=torch.tensor(token_ids, dtype=torch.long),
            token_transitions=graph.tokens,
            other_transitions=graph.other,
            num_constraints=len(constraints),
            num_main_states=self.num_main_states,
        )


class _SparseGraph:
    """Transitions `from -> to` for K listed tokens and one flag for all other tokens."""

    def __init__(self, num_states: int, num_tokens: int):
        self.tokens = torch.zeros(num_states, num_states, num_tokens, dtype=torch.bool)
        self.other = torch.zeros(num_states, num_states, dtype=torch.bool)

    def allow_all(self, source: int, target: int, allowed: bool = True) -> None:
        self.tokens[source, target] = allowed
        self.other[source, target] = allowed

    def connect(self, source: int, target: int, columns: list[int], reset_state: int) -> None:
        """The original `_connect`: the forms advance `source -> target`; every other token resets.

        From a main state (`source == reset_state`) the self-loop becomes "all but these forms",
        forgetting earlier constraints' exclusions (the self-loop reset quirk).
        """
        self.tokens[source, target, columns] = True
        self.tokens[source, source, columns] = False
        self.allow_all(source, source, False)
        self.allow_all(source, reset_state, True)
        self.tokens[source, reset_state, columns] = False


# ----------------------------------------------------------------------------------------------
# Everything for one image, and checks on decoded captions
# ----------------------------------------------------------------------------------------------


class NocapsConstraints:
    """Image key -> (constraint class names, FSM), from the four files of the original's NoCaps yaml.

    Example:
        >>> constraints = NocapsConstraints.from_files(tokenizer, boxes="val.cbsbox.tsv",  # doctest: +SKIP
        ...     hierarchy="class_hierarchy.json", constraint_tokens="constraint2tokens.tsv",
        ...     token_forms="tokenforms.tsv")
        >>> names, fsm = constraints("0013ea2087020901")  # doctest: +SKIP
    """

    def __init__(self, boxes: dict, constraint_filter: ConstraintFilter, builder: FSMBuilder):
        self.boxes = boxes
        self.filter = constraint_filter
        self.builder = builder

    @classmethod
    def from_files(
        cls,
        tokenizer,
        *,
        boxes: str | os.PathLike,
        hierarchy: str | os.PathLike,
        constraint_tokens: str | os.PathLike,
        token_forms: str | os.PathLike,
        nms_threshold: float = 0.85,
        max_given_constraints: int = 3,
        max_words_per_constraint: int = 4,
    ) -> NocapsConstraints:
        """`boxes` is the original's TSV, or nocaps' COCO-style JSON (keys are then its image ids)."""
        reader = read_boxes_json if str(boxes).endswith(".json") else read_boxes_tsv
        return cls(
            reader(boxes),
            ConstraintFilter(hierarchy, nms_threshold, max_given_constraints),
            FSMBuilder(tokenizer, constraint_tokens, token_forms, max_given_constraints, max_words_per_constraint),
        )

    def constraints(self, image_key) -> list[str]:
        """An image missing from the boxes file gets no constraints."""
        return self.filter(self.boxes.get(image_key, DetectorBoxes.empty()))

    def __call__(self, image_key) -> tuple[list[str], ConstraintFSM]:
        names = self.constraints(image_key)
        return names, self.builder.build(names)


def contains_constraint(token_ids: Sequence[int], form_ids: Sequence[Sequence[int]]) -> bool:
    """Whether `token_ids` holds consecutive tokens matching each position's forms (any occurrence)."""
    width = len(form_ids)
    if width == 0:
        return False
    accepted = [set(position) for position in form_ids]
    return any(
        all(token_ids[start + j] in accepted[j] for j in range(width)) for start in range(len(token_ids) - width + 1)
    )


__all__ = [
    "BLACKLIST",
    "RENAMES",
    "ConstraintFilter",
    "DetectorBoxes",
    "FSMBuilder",
    "NocapsConstraints",
    "contains_constraint",
    "load_wordforms",
    "read_boxes_json",
    "read_boxes_tsv",
]
