import pytest

from saemnesia_core import SAEError
from saemnesia_core.prompts import (
    assemble_prompts,
    build_prompts,
    concept_kinds,
    parse_labelled_lines,
    planned_concepts,
)


def test_templates_cross_objects_and_styles_with_labels():
    ps = build_prompts(["cat", "dog"], ["ink"], ["a {object} in {style} style", "a photo of a {object}", "{style} art"])
    assert [p.text for p in ps] == ["a cat in ink style", "a dog in ink style", "a photo of a cat",
                                    "a photo of a dog", "ink art"]
    assert ps[0].labels == {"cat": "object", "ink": "style"} and ps[4].labels == {"ink": "style"}


def test_labelled_lines_with_kinds_comments_and_unlabelled():
    ps = parse_labelled_lines("cat: a cat on a sofa\nstyle/ink: a house, ink drawing  # ink\n\n a plain street\n# x")
    assert [(p.text, p.labels) for p in ps] == [("a cat on a sofa", {"cat": "concept"}),
                                                ("a house, ink drawing", {"ink": "style"}),
                                                ("a plain street", {})]


def test_empty_and_conflicting_inputs_are_refused():
    with pytest.raises(SAEError, match="empty"):
        assemble_prompts("", "", "a {object}", "  \n# only a comment")
    with pytest.raises(SAEError, match="placeholder"):
        build_prompts(["cat"], [], ["a photo"])
    with pytest.raises(SAEError, match="both"):
        concept_kinds(parse_labelled_lines("object/ink: a\nstyle/ink: b"))


def test_planned_concepts_read_the_train_boxes_as_training_does():
    """What the picker offers before an SAE is trained (served by the pack's route)."""
    planned = planned_concepts("cat; dog", "ink", "a {object} in {style} style",
                               "style/Van Gogh: a starry night  # comment\nobject/cat: again\nno label here")
    assert planned == [("cat", "object"), ("dog", "object"), ("ink", "style"), ("Van Gogh", "style")]
    assert planned_concepts("cat", "ink", "a photo of a {object}", "") == [("cat", "object")]  # no {style}
    assert planned_concepts("cat", "ink", "", "") == [("cat", "object"), ("ink", "style")]  # the default template
    assert planned_concepts("<b>x</b>", "", "", "") == [("<b>x</b>", "object")]  # shown escaped, refused at training


def test_a_labelled_line_may_name_several_concepts_and_borrow_their_kinds():
    """A reworded prompt shows an object and a style at once: both are labelled, and a label
    without 'object/' or 'style/' takes the kind its name has in the objects or styles list."""
    ps = assemble_prompts("circle", "stripes", "a {object} in {style} style",
                          "circle, style/stripes: a striped round ball\nstripes: banded pattern\nobject/ring: a ring")
    assert [(p.text, p.labels) for p in ps[1:]] == [
        ("a striped round ball", {"circle": "object", "stripes": "style"}),
        ("banded pattern", {"stripes": "style"}), ("a ring", {"ring": "object"})]
    assert planned_concepts("circle", "", "a {object}", "circle, dots: x") == [("circle", "object"), ("dots", "concept")]
    with pytest.raises(SAEError, match="both"):
        assemble_prompts("circle", "", "a {object}", "style/circle: a striped ball")
    # a kind given later settles a label first seen without one
    assert concept_kinds(parse_labelled_lines("ink: a\nstyle/ink: b")) == {"ink": "style"}
