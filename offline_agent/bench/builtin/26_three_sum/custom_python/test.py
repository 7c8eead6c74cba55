from three_sum import three_sum

cases = [
    ([2, 7, 11, 15], 20, [0, 1, 2]),
    ([2, 7, 0, 15, 12, 0], 2, [0, 2, 5]),
    ([-6, 7, 11, 4], 9, [0, 2, 3]),
]
for nums, target, expected in cases:
    got = sorted(three_sum(nums, target))
    assert got == expected, f"three_sum({nums}, {target}) gave {got}, expected {expected}"
print("All tests passed")
