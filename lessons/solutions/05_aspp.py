"""Reference solution of lesson 5's exercise (graded by checks.check_aspp)."""
import minideeplab.functional as F


def aspp_forward(x, w_pool, w_1x1, w_atrous, w_project, rates):
    # Image pooling: one vector per image, a 1x1 conv, back to the map's size (a 1x1 map
    # resized bilinearly is the same vector at every pixel).
    pooled = F.relu(F.conv2d(F.global_avg_pool(x), w_pool))
    branches = [F.resize_bilinear(pooled, x.shape[2:], align_corners=True),
                F.relu(F.conv2d(x, w_1x1))]
    branches += [F.relu(F.atrous_conv2d(x, w, rate=r)) for w, r in zip(w_atrous, rates)]
    # The official order (image pooling, 1x1, rates), then the 1x1 projection.
    return F.relu(F.conv2d(F.concat(branches, axis=1), w_project))
