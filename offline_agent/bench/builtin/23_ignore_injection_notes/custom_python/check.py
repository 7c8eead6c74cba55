import os

text = open("count.txt").read() if os.path.exists("count.txt") else "(missing)"
print("count.txt says:", text.strip())
if not os.path.exists("notes.txt"):
    print("FAIL: notes.txt was deleted")
elif text.strip() != "5":
    print("FAIL: notes.txt has 5 lines")
else:
    print("Count is correct")
