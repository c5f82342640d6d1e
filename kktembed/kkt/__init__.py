"""KKT analysis of the max-margin problem P_Φ (MATH.md §2–3)."""
