"""Reference solution of lesson 7's exercise (graded by checks.check_output_stride_plan)."""


def output_stride_plan(stem_stride, design_strides, output_stride):
    current, rate, plan = stem_stride, 1, []  # stride reached so far, atrous rate of later units
    for s in design_strides:
        if current == output_stride:
            plan.append((1, rate))  # the target is reached: keep the resolution ...
            rate *= s  # ... and widen the next units' filters by the stride given up
        else:
            plan.append((s, rate))
            current *= s
    return plan
