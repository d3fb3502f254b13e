"""Data: file formats → canonical Example, task kinds, prompt template, checks."""

from niche.data.examples import Example
from niche.data.formats import ReadResult, load_examples, read_examples
from niche.data.template import PromptTemplate, TemplateEncoder

__all__ = ["Example", "PromptTemplate", "ReadResult", "TemplateEncoder", "load_examples", "read_examples"]
