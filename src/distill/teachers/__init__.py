"""Teachers: anything that answers a batch with a ``TeacherOutput`` and never trains."""

from distill.teachers.base import Teacher, TeacherOutput
from distill.teachers.module import Module

__all__ = ["Module", "Teacher", "TeacherOutput"]
