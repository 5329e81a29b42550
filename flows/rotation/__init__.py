"""The rotation itself: the steps, the checklists that order them, the plan, the run context, the step runners
and table, the lock and the emergency handover, crash points, dry runs and notifications."""
