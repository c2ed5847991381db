# Writes a C file with many functions for the gcc check (cc1 is allocation-heavy).
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
print("#include <string.h>")
print("struct s { int a[8]; double d; const char *name; };")
for i in range(n):
    print(f"""static int helper{i}(struct s *p, int x) {{
    for (int k = 0; k < 8; k++) p->a[k] += x * {i % 17} + k;
    if (x > {i}) return (int)strlen(p->name) + p->a[x & 7];
    return helper{i}(p, x + {1 + i % 5}) ^ {i};
}}
int func{i}(int x) {{ struct s v = {{{{0}}, {i}.5, "f{i}"}}; return helper{i}(&v, x); }}""")
print("int main(void) { int t = 0;")
for i in range(0, n, 7):
    print(f"  t += func{i}({i});")
print("  return t & 1; }")
