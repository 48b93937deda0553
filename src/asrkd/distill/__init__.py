"""Knowledge distillation: losses, strategies, teachers, the teacher-output cache, student init."""
