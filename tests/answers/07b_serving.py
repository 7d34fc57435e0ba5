"""Recorded answers for 07b_serving: mistakes learners really make must lose points; other correct answers keep them."""
from tests.answers import Right, Wrong  # noqa: F401

ANSWERS = [
    # ------------------------------------------------------------------ load and metrics (md-07b-load)
    # ------------------------------------------------------------------ prefix caching (md-07b-prefix)
    Wrong("refcount", "free puts every block back on the free list, shared or not", visible=True,
          replace=[("            self.refs[block] -= 1\n            if self.refs[block] == 0:\n"
                    "                self.free_list.append(block)\n",
                    "            self.refs[block] = 0\n            self.free_list.append(block)\n")]),
    Wrong("refcount", "fork copies: the child gets fresh blocks of its own", visible=True,
          replace=[("        for block in table:\n            self.refs[block] += 1\n"
                    "        self.tables[child], self.lengths[child] = list(table), self.lengths[parent]\n",
                    "        self.tables[child] = self._take(len(table))\n"
                    "        self.lengths[child] = self.lengths[parent]\n")]),
    Wrong("refcount", "fork shares the blocks but does not count the new holder", visible=True,
          replace=[("        for block in table:\n            self.refs[block] += 1\n", "")]),
    Wrong("refcount", "fork hands the child the parent's list itself (aliased tables)", visible=True,
          replace=[("self.tables[child], self.lengths[child] = list(table), self.lengths[parent]",
                    "self.tables[child], self.lengths[child] = table, self.lengths[parent]")]),
    Wrong("refcount", "append writes into a shared last block without copying it", visible=True,
          replace=[("        elif self.refs[table[-1]] > 1:\n"
                    "            src, dst = table[-1], self._take(1)[0]\n"
                    "            self.refs[src] -= 1\n            table[-1] = dst\n"
                    "            copy = (src, dst)\n", "")]),
    Wrong("refcount", "copy-on-write forgets to drop the old block's count", visible=True,
          replace=[("            self.refs[src] -= 1\n", "")]),
    Wrong("refcount", "copy-on-write lowers the old count before taking the fresh block", visible=True,
          replace=[("            src, dst = table[-1], self._take(1)[0]\n            self.refs[src] -= 1\n",
                    "            src = table[-1]\n            self.refs[src] -= 1\n"
                    "            dst = self._take(1)[0]\n")]),
    Wrong("refcount", "copy-on-write when the last block is shared, even when it is full",
          replace=[("        if length % self.block_size == 0:\n            table.append(self._take(1)[0])\n"
                    "        elif self.refs[table[-1]] > 1:\n",
                    "        if self.refs[table[-1]] > 1:\n"),
                   ("            copy = (src, dst)\n", "            copy = (src, dst)\n"
                    "        elif length % self.block_size == 0:\n"
                    "            table.append(self._take(1)[0])\n")]),
    Right("refcount", "frees the blocks front to back, builds new lists instead of changing them in place",
          replace=[("        for block in reversed(self.tables.pop(seq)):\n",
                    "        for block in self.tables.pop(seq):\n"),
                   ("            table[-1] = dst\n", "            self.tables[seq] = table[:-1] + [dst]\n"),
                   ("            table.append(self._take(1)[0])\n",
                    "            self.tables[seq] = table + self._take(1)\n")]),
    Right("refcount", "counts holders with a collections.Counter and integer ceiling division",
          replace=[("        self.tables[seq] = self._take(math.ceil(n_tokens / self.block_size))\n",
                    "        self.tables[seq] = self._take(-(-n_tokens // self.block_size))\n"),
                   ("        for block in table:\n            self.refs[block] += 1\n",
                    "        import collections\n"
                    "        for block, n in collections.Counter(table).items():\n"
                    "            self.refs[block] += n\n")]),
    # ------------------------------------------------------------------ speculative decoding (md-07b-spec)
    # ------------------------------------------------------------------ int8 KV cache (md-07b-int8)
]
