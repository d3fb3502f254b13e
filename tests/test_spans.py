"""Values copied from the input: placing them (overlaps, repeats, spelling), tags, and the JSON put back."""

from niche.data.spans import (
    ExtractionField,
    ExtractionPlan,
    Span,
    assemble,
    bio_tags,
    extraction_plan,
    occurrences,
    place_values,
    spans_from_tags,
    words_with_offsets,
)


def test_a_value_is_found_as_whole_words_as_written_then_ignoring_case_then_spacing() -> None:
    text = "remind me about tomorrow's Meeting at someone's house"
    assert list(occurrences(text, "one")) == [], "never inside a longer word"
    assert [text[a:b] for a, b in occurrences(text, "meeting")] == ["Meeting"], "case is ignored when needed"
    assert [text[a:b] for a, b in occurrences(text, "tomorrow 's")] == ["tomorrow's"], "spacing too"
    assert [text[a:b] for a, b in occurrences(text, "Meeting")] == ["Meeting"]


def test_longer_values_are_placed_first_and_an_overlapped_value_is_reported() -> None:
    text = "wake me tomorrow morning and every morning"
    spans, unplaced = place_values(text, [("time", "morning"), ("date", "tomorrow morning")])
    placed = {span.field: text[span.start : span.end] for span in spans}
    assert placed == {"date": "tomorrow morning", "time": "morning"}
    time_span = next(span for span in spans if span.field == "time")
    assert time_span.start == text.rindex("morning"), "the first occurrence free of the longer value"
    spans, unplaced = place_values("tomorrow morning", [("time", "morning"), ("date", "tomorrow morning")])
    assert [(item.field, item.reason) for item in unplaced] == [("time", "overlaps a longer value")]
    _, unplaced = place_values("hello", [("city", "paris")])
    assert [item.reason for item in unplaced] == ["not in the input"]


def test_a_repeated_value_listed_once_marks_its_first_occurrence_and_listed_twice_both() -> None:
    text = "five pm or five pm"
    once, _ = place_values(text, [("time", "five pm")])
    assert [(span.start, span.end) for span in once] == [(0, 7)]
    twice, _ = place_values(text, [("time", "five pm"), ("time", "five pm")])
    assert [(span.start, span.end) for span in twice] == [(0, 7), (11, 18)]


def test_bio_tags_read_back_into_the_same_spans() -> None:
    text = "order chinese food from golden dragon tonight"
    pieces = words_with_offsets(text)
    offsets = [(start, end) for _, start, end in pieces]
    spans, _ = place_values(text, [("food", "chinese"), ("place", "golden dragon")])
    tags = bio_tags(offsets, spans)
    assert tags == ["O", "B-food", "O", "O", "B-place", "I-place", "O"]
    assert spans_from_tags(tags, offsets) == spans
    # A stray I- starts a span rather than losing the value.
    assert spans_from_tags(["O", "I-food", "O"], offsets[:3]) == [Span("food", 6, 13)]


def test_answers_are_assembled_in_the_schema_order_with_required_objects_and_list_shapes() -> None:
    plan = ExtractionPlan(
        [
            ExtractionField(("intent",), "choice", choices=("book", "cancel")),
            ExtractionField(("slots",), "object"),
            ExtractionField(("slots", "city"), "span", "either", required=False),
            ExtractionField(("slots", "date"), "span", "string", required=False),
        ]
    )
    text = "book paris and rome on monday or tuesday"
    spans = [
        Span("slots.city", 5, 10),
        Span("slots.city", 15, 19),
        Span("slots.date", 23, 29),
        Span("slots.date", 33, 40),
    ]
    answer = assemble(plan, text, spans, {"intent": "book"})
    assert list(answer) == ["intent", "slots"]
    assert answer == {"intent": "book", "slots": {"city": ["paris", "rome"], "date": "monday"}}
    assert assemble(plan, text, [Span("slots.city", 5, 10)], {"intent": None}) == {"slots": {"city": "paris"}}
    assert assemble(plan, text, [], {"intent": "cancel"}) == {"intent": "cancel", "slots": {}}


def test_the_plan_reads_copied_fields_and_closed_sets_and_names_what_a_tagger_cannot_answer() -> None:
    schema = {
        "type": "object",
        "properties": {
            "intent": {"type": "string", "enum": ["a", "b"]},
            "slots": {
                "type": "object",
                "properties": {
                    "city": {
                        "type": ["array", "string"],
                        "items": {"type": "string", "x-niche-copy": True},
                        "x-niche-copy": True,
                    },
                    "count": {"type": "integer"},
                },
            },
        },
        "required": ["intent", "slots"],
    }
    plan = extraction_plan(schema)
    assert [(item.name, item.kind, item.shape) for item in plan.fields] == [
        ("intent", "choice", "string"),
        ("slots.city", "span", "either"),
    ]
    assert set(plan.unsupported) == {"slots.count"} and not plan.taggable
    assert ExtractionPlan.from_record(plan.to_record()).entries == plan.entries
